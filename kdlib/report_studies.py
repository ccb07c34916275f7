"""What the book says across its studies: the tables that span them (``book/reproducibility.md``,
``book/protocol.md``: provenance, teachers, hardware and wall times, one row per study and stage rather than
one per record), the landing page's answer and its claims-versus-evidence table (``book/intro.md``: how each
method's verdict moved from version to version), and version 2's power table (``book/protocol_v2.md``).

A study is a folder of ``data/results/`` read by :func:`kdlib.report.study_records` (version 1: ``proxy``)
or a stage of a staged study (:data:`STAGED`: each one's teachers, tuning and final stages).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from kdlib import comparison, report, results, staged_report, stats
from kdlib.methods import CHANNEL_METHODS, options_in_words
from kdlib.paths import REPORTED_CSV, RESULTS_DIR, relative, repo_path
from kdlib.staged_report import display_name, stage_records
from kdlib.study.staged import load_staged

#: The names readers know the studies by, by their folder under ``data/results/`` or their staged profile.
STUDY_NAMES = {"proxy": "version 1", "proxy_v2": "version 2", "proxy_v3": "version 3, resnet32 → resnet8",
               "proxy_v3_resnet56": "version 3, resnet56 → resnet20"}
#: The staged studies whose records the book reads, oldest first.
STAGED = ("proxy_v2", "proxy_v3", "proxy_v3_resnet56")


def studies() -> list[tuple[str, Path, pd.DataFrame]]:
    """``(study, folder, records)`` for each study and stage whose records the book reads: each folder of
    ``data/results/`` the version-1 tables read, then each staged study's teachers, tuning and final
    stages."""
    v1 = report.study_records()
    out = []
    if len(v1):
        folder = [Path(p).relative_to(RESULTS_DIR).parts[0] for p in v1["path"]]
        for name, group in v1.groupby(folder, sort=True):
            out.append((STUDY_NAMES.get(str(name), str(name)), RESULTS_DIR / str(name), group))
    for profile in STAGED:
        s, name = load_staged(profile), STUDY_NAMES[profile]
        teachers = staged_report.teacher_records(s)
        if len(teachers):
            under = os.path.commonpath([Path(p).parent for p in teachers["path"]])
            out.append((f"{name}, teachers", Path(under), teachers))
        for stage in ("tuning", "final"):
            frame = stage_records(profile, stage)
            if len(frame):
                out.append((f"{name}, {stage}", s.results_dir / stage, frame))
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
        by_study.setdefault(study.split(",")[0], []).append(frame)  # a version's stages share its teachers
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


def power_table(records: pd.DataFrame | None = None, profile: str = "proxy_v2") -> pd.DataFrame:
    """Version 2's power (:func:`kdlib.comparison.power_statement`), from the first study's committed records
    (``data/results/proxy``) and the seeds and configurations ``profile`` fixes: the smallest true difference
    its comparisons with KD detect with 80% power, Holm-corrected and not."""
    records = report.study_records(RESULTS_DIR / "proxy") if records is None else records
    final = load_staged(profile).final
    family = len(final["configurations"]) - 1
    rows = []
    for seeds in (3, len(final["seeds"])):
        p = comparison.power_statement(records, seeds, family, final["alpha"])
        rows.append({"paired seeds": seeds, "comparisons with KD": family,
                     "SD of paired differences (v1, pooled)": f"{p['sd']:.2f} ({p['df']} df)",
                     "detectable with 80% power, Holm": f"{p['detectable']:.2f}",
                     "same, uncorrected": f"{p['detectable_uncorrected']:.2f}"})
    return pd.DataFrame(rows)


def landing() -> str:
    """The landing page's answer in plain words: the newest complete staged study's
    (:func:`kdlib.staged_report.headline`), else where the newest stands; then, for each further pair of
    its version (:data:`kdlib.staged_report.MORE_PAIRS`), that pair's headline or where it stands. Each
    pair's answer is led by the version and the pair it is of."""
    newest = staged_report.resolve(staged_report.NEWEST)
    profiles = [newest, *staged_report.MORE_PAIRS.get(newest, ())]
    parts = []
    for ordinal, profile in zip(("first", "second", "third"), profiles, strict=False):
        pair = load_staged(profile).pair
        which = f", {ordinal} pair" if len(profiles) > 1 else ""
        lead = f"*Version {staged_report.version(profile)}{which} ({pair.teacher} → {pair.student}):*"
        parts += [lead, staged_report.headline(profile)]
    return "\n\n".join(parts)


#: Where each channel method's official code is, and at which commit (empty where none was released).
OFFICIAL_CODE_CSV = REPORTED_CSV.parent / "official_code.csv"


def _reported_claim(method: str, reported: pd.DataFrame) -> str:
    """The paper's gain over KD on the first CIFAR-100 pair its table lists (top-1 points), with its source;
    else which datasets it reports."""
    own = reported[(reported["method_id"] == method)
                   & ~reported["paper"].str.contains("3rd-party|reproduction|early", case=False)]
    cifar = own[(own["dataset"] == "CIFAR-100") & own["metric"].str.startswith("top1")]
    if not len(cifar):
        label = display_name(method)
        papers = reported[reported["paper"].str.startswith(label) | (reported["method_id"] == method)]
        datasets = sorted(set(papers["dataset"]) - {"(ablation)"})
        return (f"none on CIFAR-100 against KD; it reports {', '.join(datasets)}" if datasets else
                "no reported number")
    first = cifar.iloc[0]
    rows = cifar[(cifar["teacher_id"] == first["teacher_id"]) & (cifar["student_id"] == first["student_id"])]
    row = rows[rows["variant"] == "default"].iloc[0] if (rows["variant"] == "default").any() else first
    kd = reported[(reported["paper"] == row["paper"]) & (reported["dataset"] == row["dataset"])
                  & (reported["method_id"] == "kd") & (reported["teacher_id"] == row["teacher_id"])
                  & (reported["student_id"] == row["student_id"]) & (reported["metric"] == row["metric"])]
    where = f"on {row['teacher']} → {row['student']}"
    if not len(kd):
        return f"no KD row {where}"
    gain, k = row["reported_acc"] - kd.iloc[0]["reported_acc"], kd.iloc[0]["reported_acc"]
    error = " (from the error rates it reports)" if row["metric"].endswith("err") else ""
    return (f"{gain:+.2f} {where}: {row['method']} {row['reported_acc']:.2f} vs KD {k:.2f}{error}; "
            f"source: {row['source']}")


def _v1_cell(paired: pd.DataFrame, method: str) -> str:
    """Version 1's difference from KD and its verdict for ``method``: its default configuration, else (a
    method whose paper's weights are not kdlib's defaults) its variant with the fewest options, named."""
    rows = paired[paired["method"] == method] if len(paired) else paired
    if not len(rows):
        return "not run"
    default = rows[rows["variant"] == "default"]
    row = default.iloc[0] if len(default) else rows.loc[rows["variant"].str.count(",").idxmin()]
    verdict = str(row["last epoch: verdict"]).replace(" kd", " KD")
    named = "" if row["variant"] == "default" else f" ({options_in_words(row['variant'])})"
    return f"{row['top-1 minus kd, last epoch']}: {verdict}{named}"


def _weight(row: pd.Series) -> str:
    """``cd_weight 24 (×4, an end of the grid)``, ``the default weights (×1)``: a tuned method's chosen
    weight."""
    weights = ", ".join(f"{k} {v:g}" for k, v in (row["overrides"] or {}).items())
    end = ", an end of the grid" if row["where"] == staged_report.FIXED_END else (
        ", at the limit" if row["where"] == comparison.AT_LIMIT else "")
    return f"{weights or 'the default weights'} ({staged_report.multiple(row['multiplier'])}{end})"


def _kd_cells(profile: str) -> dict[str, str]:
    """Each channel method's difference from KD with Holm's verdict in a staged study, at the weight its
    tuning chose: the weight once the tuning is complete, the difference once every final run is recorded,
    and until then where the study stands (``under way (165 of 190 final runs); at ickd_weight 10 (×4)``)."""
    stand = staged_report.progress(profile)
    (tuned, tuning), (done, planned) = stand["tuning"], stand["final"]
    if not tuning or tuned < tuning:
        return dict.fromkeys(CHANNEL_METHODS, "under way (tuning)")
    chosen = staged_report.study_plan(profile).chosen.set_index("method")
    at = {m: f"; at {_weight(chosen.loc[m])}" if m in chosen.index else "; not tuned"
          for m in CHANNEL_METHODS}
    if not staged_report.complete(profile):
        return {m: f"under way ({done} of {planned} final runs){at[m]}" for m in CHANNEL_METHODS}
    own = staged_report.own_rows(profile)
    kd = own[own["baseline"] == "kd"].set_index("method")
    return {m: _kd_cell(kd.loc[m]) + at[m] if m in kd.index else
            f"not in {STUDY_NAMES[profile].split(',')[0]}" for m in CHANNEL_METHODS}


#: The claims table's column of version 2, its difference from KD at the weight it tuned.
V2_COLUMN = "version 2 minus KD [95% CI] (tuned weight)"
#: The same of version 3's first pair.
V3_COLUMN = "version 3 minus KD [95% CI] (bracketed weight)"


def claims_table(v1: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per channel method, what its paper claims beside what this study measured: public code, the paper's
    gain over KD on CIFAR-100, version 1's verdict at the paper's weights, version 2's difference from KD
    with Holm's verdict at its tuned weight, and version 3's once complete: its first pair's, then, for the
    methods a further pair of it runs (:data:`kdlib.staged_report.MORE_PAIRS`), that pair's, named. How each
    verdict moved from version to version."""
    reported = results.map_reported(pd.read_csv(REPORTED_CSV, dtype=str, keep_default_na=False),
                                    results.load_method_map())
    code = pd.read_csv(OFFICIAL_CODE_CSV, dtype=str, keep_default_na=False).set_index("method")
    paired = report.paired(report.study_records() if v1 is None else v1)
    v2, v3 = _kd_cells("proxy_v2"), _kd_cells("proxy_v3")
    for profile in staged_report.MORE_PAIRS.get("proxy_v3", ()):
        s, cells = load_staged(profile), _kd_cells(profile)
        for method in set(s.tuning["methods"]) & set(CHANNEL_METHODS):
            v3[method] += f". {s.pair.teacher} → {s.pair.student}: {cells[method]}"
    rows = []
    for method in CHANNEL_METHODS:
        c = code.loc[method] if method in code.index else None
        public = (f"[yes, {c['commit']}](https://{c['code']}/tree/{c['commit']})"
                  + (f" ({c['note']})" if c["note"] else "")) if c is not None and c["code"] else (
                  (c["note"] or "no") if c is not None else "not recorded")
        rows.append({"method": display_name(method), "public code": public,
                     "paper's gain over KD, CIFAR-100 (top-1 points)": _reported_claim(method, reported),
                     "version 1 minus KD (paper's weights, 3 seeds)": _v1_cell(paired, method),
                     V2_COLUMN: v2[method], V3_COLUMN: v3[method]})
    return pd.DataFrame(rows)


def _kd_cell(row: pd.Series) -> str:
    """A row of :func:`kdlib.comparison.holm_comparisons` against KD as the claims table shows it:
    ``-1.05 [-1.87, -0.23], Holm p = 0.017: below KD``."""
    verdict = {"above": "above KD", "below": "below KD"}.get(row["verdict"], row["verdict"])
    interval = f"{row['mean']:+.2f} [{row['lo']:+.2f}, {row['hi']:+.2f}]"
    return f"{interval}, {stats.p_phrase(row['p_holm'])}: {verdict}"


#: The cross-study tables for the book's ``kdlib-table`` directive, by name.
TABLES: dict[str, Callable[..., pd.DataFrame]] = {
    "provenance-by-study": provenance,
    "runs-by-study": runs,
    "teachers-by-study": teachers,
    "power-v2": power_table,
    "claims": claims_table,
}
