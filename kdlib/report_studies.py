"""The tables that span every study the book reports (``book/reproducibility.md``, ``book/protocol.md``):
provenance, teachers, hardware and wall times, one row per study and stage rather than one per record.

A study is a folder of ``data/results/`` read by :func:`kdlib.report.study_records` (version 1: ``proxy``)
or a stage of a staged study (version 2: ``proxy_v2/tuning`` and ``proxy_v2/final``, and its teacher).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from kdlib import report, results
from kdlib.paths import RESULTS_DIR, relative, repo_path
from kdlib.report_v2 import PROFILE, stage_records
from kdlib.study.staged import load_staged, teacher_checkpoint

#: The names readers know the studies by, by their folder under ``data/results/``.
STUDY_NAMES = {"proxy": "version 1"}


def studies() -> list[tuple[str, Path, pd.DataFrame]]:
    """``(study, folder, records)`` for each study and stage whose records the book reads: each folder of
    ``data/results/`` the version-1 tables read, then version 2's teacher, tuning and final stages."""
    v1 = report.study_records()
    out = []
    if len(v1):
        folder = [Path(p).relative_to(RESULTS_DIR).parts[0] for p in v1["path"]]
        for name, group in v1.groupby(folder, sort=True):
            out.append((STUDY_NAMES.get(str(name), str(name)), RESULTS_DIR / str(name), group))
    staged = load_staged(PROFILE)
    record = teacher_checkpoint(staged).parent / "record.json"
    if record.is_file():
        teacher = results.load_records([record], statuses=report.SHOWN)
        out.append(("version 2, teacher", record.parent, teacher))
    for stage in ("tuning", "final"):
        frame = stage_records(stage)
        if len(frame):
            out.append((f"version 2, {stage}", staged.results_dir / stage, frame))
    return out


def _dates(frame: pd.DataFrame) -> str:
    days = frame["created_at"].astype(str).str[:10]
    first, last = days.min(), days.max()
    return first if first == last else f"{first} to {last}"


def _commits(frame: pd.DataFrame) -> str:
    labels = sorted({results.commit_label(c, d) for c, d in zip(frame["git_commit"], frame["git_dirty"],
                                                                 strict=True)})
    return ", ".join(labels) if len(labels) <= 3 else f"{len(labels)} commits (each record's below)"


def provenance(entries: list[tuple[str, Path, pd.DataFrame]] | None = None) -> pd.DataFrame:
    """Per study and stage: where its records are, how many (completed, diverged), the hardware they ran on,
    the commits they name, the dates they were made and their summed wall time."""
    rows = []
    for study, folder, frame in studies() if entries is None else entries:
        diverged = int((frame["status"] == results.STATUS_DIVERGED).sum())
        rows.append({"study": study, "records under": relative(folder), "records": len(frame),
                     "diverged": diverged, "hardware": ", ".join(sorted(set(report.hardware(frame)))),
                     "precision": ", ".join(sorted(set(frame["precision"].astype(str)))),
                     "commits": _commits(frame), "made": _dates(frame),
                     "wall time, hours": report.number(frame["wall_time_s"].sum() / 3600)})
    return pd.DataFrame(rows)


def runs(entries: list[tuple[str, Path, pd.DataFrame]] | None = None) -> pd.DataFrame:
    """Hardware and wall times per study and stage: dataset, epochs, device and hardware, runs, median wall
    time and median training throughput of the completed runs."""
    rows = []
    for study, _, frame in studies() if entries is None else entries:
        done = frame[frame["status"] == "completed"]
        if not len(done):
            continue
        rows.append({"study": study, "dataset": ", ".join(sorted(set(done["dataset"]))),
                     "training images": ", ".join(sorted({"all" if pd.isna(s) else f"{int(s):,}"
                                                          for s in done["subset"]})),
                     "epochs": ", ".join(sorted({str(int(e)) for e in done["epochs"]})),
                     "device": ", ".join(sorted(set(done["device"].astype(str)))),
                     "hardware": ", ".join(sorted(set(report.hardware(done)))), "runs": len(done),
                     "median wall time (s)": report.number(done["wall_time_s"].median(), 0),
                     "median images/s": report.number(done["images_per_s"].median(), 0)})
    return pd.DataFrame(rows)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _teacher_records() -> dict[str, pd.Series]:
    """Each teacher checkpoint under ``data/teachers*/`` with a record beside it, by the checkpoint's
    SHA-256: the record of the run that trained it."""
    found = {}
    for record in sorted(repo_path("data").glob("teachers*/**/record.json")):
        checkpoint = record.parent / "model.pt"
        if checkpoint.is_file():
            frame = results.load_records([record], statuses=None)
            found[_sha256(checkpoint)] = frame.iloc[0]
    return found


def _trained(t: pd.Series) -> str:
    """How a teacher was trained, from its record: method, epochs, images, hardware and commit."""
    images = ("all training images" if pd.isna(t["subset"]) else f"{int(t['subset']):,} images")
    if not pd.isna(t.get("val_subset")):
        images = f"all but the {int(t['val_subset']):,} validation images"
    return (f"{t['method']}, {int(t['epochs'])} epochs, {images}, {report.hardware(t.to_frame().T)[0]}, "
            f"{results.commit_label(t['git_commit'], t['git_dirty'])}")


def teachers(entries: list[tuple[str, Path, pd.DataFrame]] | None = None) -> pd.DataFrame:
    """Each study's teacher (a staged study's stages together): its checkpoint, how it was trained and on
    what (from the record beside the checkpoint, matched by SHA-256), and its test top-1 as the distillation
    runs evaluated it before training (mean over the runs)."""
    trained = _teacher_records()
    by_study: dict[str, list[pd.DataFrame]] = {}
    for study, _, frame in studies() if entries is None else entries:
        by_study.setdefault(study.split(",")[0], []).append(frame)  # version 2's stages share a teacher
    rows = []
    for study, frames in by_study.items():
        frame = pd.concat(frames, ignore_index=True)
        used = frame.dropna(subset=["teacher_ckpt_sha256"])
        for sha, group in used.groupby("teacher_ckpt_sha256", sort=False):
            t = trained.get(str(sha))
            how = "not recorded" if t is None else _trained(t)
            rows.append({"study": study, "dataset": group["dataset"].iloc[0],
                         "teacher": group["teacher"].iloc[0],
                         "checkpoint": "" if t is None else relative(Path(t["path"]).parent / "model.pt"),
                         "SHA-256": str(sha)[:12], "trained": how,
                         "test top-1 (as the runs evaluated it)": report.number(group["teacher_top1"].mean()),
                         "runs": len(group)})
    return pd.DataFrame(rows)


#: The cross-study tables for the book's ``kdlib-table`` directive, by name.
TABLES: dict[str, Callable[..., pd.DataFrame]] = {
    "provenance-by-study": provenance,
    "runs-by-study": runs,
    "teachers-by-study": teachers,
    "provenance-v2": lambda: report.provenance(pd.concat([stage_records("tuning"), stage_records("final")],
                                                         ignore_index=True)),
}
