"""The second proxy study's tables and answer (``book/study_v2.md``; its protocol is ``book/protocol_v2.md``).

Its records are read by stage (``tuning``, ``final``) from the folder its staged profile names, and nothing is
compared or answered until every final run has its record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from kdlib import comparison, report, results, stats
from kdlib.methods import make_config
from kdlib.paths import PROFILES_DIR, RESULTS_DIR, relative
from kdlib.study.staged import chosen_weights, load_staged, teacher_checkpoint

#: The second proxy study's staged profile.
PROFILE = "proxy_v2"


def power_table(records: pd.DataFrame | None = None, profile: str | Path = PROFILES_DIR / "proxy_v2.json"
                ) -> pd.DataFrame:
    """The second proxy study's power (:func:`kdlib.comparison.power_statement`), from the first study's
    committed records (``data/results/proxy``) and the seeds and configurations ``profile`` fixes: the
    smallest true difference its comparisons with KD detect with 80% power, Holm-corrected and not."""
    records = report.study_records(RESULTS_DIR / "proxy") if records is None else records
    final = json.loads(Path(profile).read_text())["stages"]["final"]
    family = len(final["configurations"]) - 1
    rows = []
    for seeds in (3, len(final["seeds"])):
        p = comparison.power_statement(records, seeds, family, final["alpha"])
        rows.append({"paired seeds": seeds, "comparisons with KD": family,
                     "SD of paired differences (v1, pooled)": f"{p['sd']:.2f} ({p['df']} df)",
                     "detectable with 80% power, Holm": f"{p['detectable']:.2f}",
                     "same, uncorrected": f"{p['detectable_uncorrected']:.2f}"})
    return pd.DataFrame(rows)


def stage_records(stage: str) -> pd.DataFrame:
    """The completed and diverged records of one stage (``tuning``, ``final``) of the second proxy study."""
    return report.study_records(load_staged(PROFILE).results_dir / stage)


def _progress(records: pd.DataFrame, stage: str) -> tuple[int, int]:
    """(records in place, runs the protocol plans) of a stage."""
    s = load_staged(PROFILE)
    if stage == "tuning":
        planned = len(s.tuning["methods"]) * len(s.tuning["multipliers"]) * len(s.tuning["seeds"])
    else:
        planned = len(s.final["configurations"]) * len(s.final["seeds"])
    return len(records), planned


def teacher_table() -> pd.DataFrame:
    """The second study's teacher, from the record installed beside its checkpoint."""
    s = load_staged(PROFILE)
    ckpt = teacher_checkpoint(s)
    path = ckpt.parent / "record.json"
    if not path.is_file():
        return pd.DataFrame()
    r = json.loads(path.read_text())
    return pd.DataFrame([{
        "teacher": r["student"], "checkpoint": relative(ckpt),
        "trained": f"{r['method']}, {r['epochs']} epochs, all but the {r['val_subset']:,} validation images, "
                   f"seed {r['seed']}, {r['precision']}",
        "test top-1": report.number(r["top1_last"]),
        "validation top-1": report.number(r.get("val_top1_last")),
        "hardware": (r.get("hardware") or {}).get("gpu") or (r.get("hardware") or {}).get("cpu"),
        "commit": results.commit_label(r.get("git_commit"), r.get("git_dirty")),
    }])


def tuning_table(records: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each tuned method's mean validation top-1 (last epoch, over the tuning seeds) at each multiple of its
    main weight, and the weight :func:`kdlib.comparison.select_weights` chose (the test set is not read)."""
    s = load_staged(PROFILE)
    records = stage_records("tuning") if records is None else records
    if not len(records):
        return pd.DataFrame()
    chosen = chosen_weights(s, records)
    planned = len(s.tuning["multipliers"]) * len(s.tuning["seeds"])
    rows = []
    for row in chosen.itertuples():
        default = make_config(row.method)
        runs = int((records["method"] == row.method).sum())
        cells = {"method": row.method, "runs": f"{runs} of {planned}",
                 "main weight (default)": ", ".join(f"{name} = {getattr(default, name):g}"
                                                    for name in comparison.MAIN_WEIGHTS[row.method])}
        for multiplier, score in row.scores.items():
            cells[f"×{multiplier:g}"] = report.number(score) if score is not None else "–"
        if runs < planned:
            cells["chosen"] = "waiting for its runs"
        else:
            cells["chosen"] = f"×{row.multiplier:g}" if isinstance(row.chosen, str) else "none: all diverged"
        cells["note"] = "; ".join(n for n in row.note.split("; ") if "no run for" not in n)
        rows.append(cells)
    return pd.DataFrame(rows)


def final_table(records: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each configuration of the final stage: its weight, runs, and mean test and validation top-1 (last
    epoch) with the 95% interval over its seeds."""
    records = stage_records("final") if records is None else records
    if not len(records):
        return pd.DataFrame()
    rows = []
    for (method, variant), group in records.groupby(["method", "variant"], sort=False):
        done = group[group["status"] == "completed"]
        cells = {}
        for name, column in (("test top-1", "top1_last"), ("validation top-1", "val_top1_last")):
            values = done[column].astype(float)
            cells[name] = report.mean_ci(values.mean(), *results.mean_interval(values), len(done))
        rows.append({"configuration": method, "weight": variant, "runs": len(done),
                     "diverged": int((group["status"] == results.STATUS_DIVERGED).sum()), **cells})
    return pd.DataFrame(rows)


def comparisons(baseline: str = "kd", records: pd.DataFrame | None = None) -> pd.DataFrame:
    """The final stage's configurations minus ``baseline`` (top-1 points, last epoch, paired seeds), with the
    paired t-test's p-value and Holm's over the family; empty until every final run has its record."""
    records = stage_records("final") if records is None else records
    done, planned = _progress(records, "final")
    if done < planned:
        return pd.DataFrame()
    table = comparison.holm_comparisons(records, baseline)
    return pd.DataFrame({
        "configuration": table["method"], "weight": table["variant"], "paired seeds": table["n"],
        f"minus {baseline}": [report.mean_ci(m, lo, hi, n) for m, lo, hi, n in
                              zip(table["mean"], table["lo"], table["hi"], table["n"], strict=True)],
        "p": [stats.format_p(p) for p in table["p"]], "Holm p": [stats.format_p(p) for p in table["p_holm"]],
        "verdict": table["verdict"],
    })


def cost_table() -> pd.DataFrame:
    """What each stage of the second proxy study has cost so far, from its records' wall times (measured)."""
    path = teacher_checkpoint(load_staged(PROFILE)).parent / "record.json"
    teacher = results.load_records([path] if path.is_file() else [], statuses=report.SHOWN)
    rows = []
    stages = (("teacher", teacher), ("tuning", stage_records("tuning")), ("final", stage_records("final")))
    for stage, frame in stages:
        if not len(frame):
            continue
        rows.append({"stage": stage, "runs": len(frame),
                     "hardware": ", ".join(sorted(set(report.hardware(frame)))),
                     "wall time, hours": report.number(frame["wall_time_s"].sum() / 3600),
                     "median minutes per run": report.number(frame["wall_time_s"].median() / 60, 1)})
    return pd.DataFrame(rows)


def answer(records: pd.DataFrame | None = None) -> str:
    """The second proxy study's answer in words (:func:`kdlib.comparison.answer`) once every final run has its
    record, with the smallest difference its realised noise lets it detect; until then, where it stands."""
    final = load_staged(PROFILE).final
    records = stage_records("final") if records is None else records
    done, planned = _progress(records, "final")
    tuned, tuning = _progress(stage_records("tuning"), "tuning")
    if done < planned:
        return ("Version 2 asks which channel methods beat KD, and the plain student, beyond the corrected "
                f"noise. It is under way: {tuned} of its {tuning} tuning runs and {done} of its {planned} "
                "final runs are recorded. Its answer is written here once every final run is, never from "
                "some of them.")
    detectable = comparison.power_statement(records, len(final["seeds"]), len(final["configurations"]) - 1,
                                            final["alpha"])["detectable"]
    return comparison.answer(records, final["baselines"], final["alpha"], detectable=detectable)


#: The second study's tables for the book's ``kdlib-table`` directive, by name.
TABLES: dict[str, Callable[..., pd.DataFrame]] = {
    "power-v2": power_table,
    "v2-teacher": teacher_table,
    "v2-tuning": tuning_table,
    "v2-final": final_table,
    "v2-cost": cost_table,
    "v2-vs-kd": lambda: comparisons("kd"),
    "v2-vs-ce": lambda: comparisons("ce"),
}
