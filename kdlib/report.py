"""Tables for people: the book's and the notebooks' views of ``data/`` (through :mod:`kdlib.results`).

Every function returns a :class:`pandas.DataFrame` of display strings, rendered by the book's
``kdlib-table`` directive (:func:`to_markdown`) and shown as is in the notebooks, so both say the same thing.
A number shown is either a paper's (its ``source`` column) or a run's (its record, see :func:`provenance`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from kdlib import results
from kdlib.recipes import available_recipes, get_recipe

RESULTS_DIR = results.REPO_DATA / "results"
BENCH_CSV = Path(__file__).resolve().parents[1] / "bench" / "results.csv"
NOT_MEASURED = results.STATUS_NOT_MEASURED


def study_records(path: str | Path = RESULTS_DIR) -> pd.DataFrame:
    """Completed records committed under ``data/results/`` (an empty table when there are none)."""
    path = Path(path)
    return results.load_records(path) if path.exists() else results.load_records([])


def _num(value: float | None, digits: int = 2) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _mean_ci(mean: float, lo: float, hi: float, n: float) -> str:
    """``mean [lo, hi] (n=…)``; the interval is left out for a single run."""
    if mean is None or math.isnan(mean):
        return NOT_MEASURED
    n = int(n)
    interval = f" [{_num(lo)}, {_num(hi)}]" if n > 1 else ""
    return f"{_num(mean)}{interval} (n={n})"


def scale(dataset: str, subset: float | None, epochs: float | None, recipe: str | None) -> str:
    """How big a measurement is: dataset, training images, epochs and recipe."""
    images = "full" if subset is None or pd.isna(subset) else f"{int(subset)}"
    return f"{dataset}, {images} train images, {int(epochs)} epochs ({recipe})"


def pair(teacher: str | None, student: str | None) -> str:
    if not teacher or (isinstance(teacher, float) and math.isnan(teacher)):
        return str(student)
    return f"{teacher} → {student}"


def reported_vs_measured(paper: str, records: pd.DataFrame | None = None) -> pd.DataFrame:
    """A paper's reported rows beside our measurement of the same dataset, pair, method and variant."""
    records = study_records() if records is None else records
    compared = results.compare(results.summarize(records) if len(records) else _empty_summary())
    rows = compared[compared["paper"] == paper]
    measured_here = rows["status"] == results.STATUS_MEASURED

    def ours(which: str) -> list[str]:
        cells = zip(rows[f"measured_{which}"], rows[f"measured_{which}_lo"], rows[f"measured_{which}_hi"],
                    rows["n"], measured_here, rows["status"], strict=True)
        return [_mean_ci(m, lo, hi, n) if ok else status for m, lo, hi, n, ok, status in cells]

    table = pd.DataFrame({
        "dataset": rows["dataset"],
        "pair": [pair(t, s) for t, s in zip(rows["teacher"], rows["student"], strict=True)],
        "method (as reported)": rows["method"],
        "metric": rows["metric"],
        "reported": rows["value"],
        "ours: kdlib method": [f"{m}/{v}" if isinstance(m, str) else "" for m, v in
                               zip(rows["method_id"], rows["variant"], strict=True)],
        "ours: scale": [scale(d, sub, e, r) if ok else "" for d, sub, e, r, ok in
                        zip(rows["dataset_id"], rows["subset"], rows["epochs"], rows["recipe"], measured_here,
                            strict=True)],
        "ours: last epoch": ours("last"),
        "ours: best epoch": ours("best"),
        "source": rows["source"],
    })
    return table.reset_index(drop=True)


def _empty_summary() -> pd.DataFrame:
    return pd.DataFrame(columns=[*results.CONFIG_KEYS, "n", "top1_last_mean", "top1_best_mean"])


def measured(records: pd.DataFrame | None = None, methods: list[str] | None = None) -> pd.DataFrame:
    """Our measurements per configuration: mean, 95% interval and n of last- and best-epoch top-1."""
    records = study_records() if records is None else records
    if methods is not None:
        records = records[records["method"].isin(methods)]
    if not len(records):
        return pd.DataFrame()
    summary = results.summarize(records)
    return pd.DataFrame({
        "method": summary["method"],
        "variant": summary["variant"],
        "pair": [pair(t, s) for t, s in zip(summary["teacher"], summary["student"], strict=True)],
        "scale": [scale(*v) for v in zip(summary["dataset"], summary["subset"], summary["epochs"],
                                         summary["recipe"], strict=True)],
        "top-1, last epoch": [_mean_ci(*v) for v in zip(summary["top1_last_mean"], summary["top1_last_lo"],
                                                         summary["top1_last_hi"], summary["n"], strict=True)],
        "top-1, best epoch": [_mean_ci(*v) for v in zip(summary["top1_best_mean"], summary["top1_best_lo"],
                                                         summary["top1_best_hi"], summary["n"], strict=True)],
        "teacher top-1": [_num(v) for v in summary["teacher_top1_mean"]],
    })


def reported_summary(datasets: tuple[str, ...] = ("CIFAR-100",)) -> pd.DataFrame:
    """The five channel methods' own headline numbers: method × pair, as each paper reports them."""
    reported = pd.read_csv(results.REPORTED_CSV, dtype=str, keep_default_na=False)
    mapped = results.map_reported(reported, results.load_method_map())
    own = {"ickd", "ccs", "cd", "cwt", "iekd"}
    rows = mapped[mapped["method_id"].isin(own) & mapped["dataset"].isin(datasets)
                  & mapped["metric"].str.startswith("top1")]
    return pd.DataFrame({
        "method": [f"{m}/{v}" for m, v in zip(rows["method_id"], rows["variant"], strict=True)],
        "as reported": rows["method"],
        "pair": [pair(t, s) for t, s in zip(rows["teacher_id"], rows["student_id"], strict=True)],
        "dataset": rows["dataset"],
        "reported top-1": [_num(v) for v in rows["reported_acc"]],
        "paper": rows["paper"],
    }).reset_index(drop=True)


def recipes() -> pd.DataFrame:
    """Every named recipe with every field (what a run with ``--recipe NAME`` uses)."""
    rows = []
    for name in available_recipes():
        recipe = get_recipe(name)
        rows.append({f.name: _cell(getattr(recipe, f.name)) for f in dataclasses.fields(recipe)})
    return pd.DataFrame(rows)


def _cell(value: object) -> str:
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) or "–"
    return "–" if value is None else str(value)


def teachers(records: pd.DataFrame | None = None) -> pd.DataFrame:
    """Teacher accuracies as measured by the runs that distilled from them (evaluated before training)."""
    records = study_records() if records is None else records
    used = records.dropna(subset=["teacher"]) if len(records) else records
    if not len(used):
        return pd.DataFrame()
    grouped = used.groupby(["dataset", "teacher"], sort=True)
    return pd.DataFrame([{
        "dataset": dataset, "teacher": teacher,
        "measured top-1": _num(group["teacher_top1"].mean()),
        "runs": len(group),
    } for (dataset, teacher), group in grouped])


def runs(records: pd.DataFrame | None = None) -> pd.DataFrame:
    """Hardware and wall times of the committed runs, per dataset, recipe and device."""
    records = study_records() if records is None else records
    if not len(records):
        return pd.DataFrame()
    keys = ["dataset", "recipe", "epochs", "device", "cpu", "gpu"]
    rows = []
    for key, group in records.groupby(keys, dropna=False, sort=True):
        row = dict(zip(keys, (_cell(None if pd.isna(k) else k) for k in key), strict=True))
        row.update({"runs": len(group), "median wall time (s)": _num(group["wall_time_s"].median(), 0),
                    "median images/s": _num(group["images_per_s"].median(), 0)})
        rows.append(row)
    return pd.DataFrame(rows)


def bench(path: str | Path = BENCH_CSV) -> pd.DataFrame:
    """The benchmark rows of ``bench/results.csv``, as measured (never estimated)."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame()
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def provenance(records: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every committed run: its record, commit, seed and hardware."""
    records = study_records() if records is None else records
    if not len(records):
        return pd.DataFrame()
    root = results.REPO_DATA.parent

    def where(path: str) -> str:
        resolved = Path(path).resolve()
        return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)

    return pd.DataFrame({
        "record": [where(p) for p in records["path"]],
        "method": records["method"], "variant": records["variant"],
        "pair": [pair(t, s) for t, s in zip(records["teacher"], records["student"], strict=True)],
        "seed": records["seed"].astype(int).astype(str),
        "top-1 last": [_num(v) for v in records["top1_last"]],
        "commit": [(c or "")[:10] + ("+dirty" if d else "") for c, d in
                   zip(records["git_commit"], records["git_dirty"], strict=True)],
        "hardware": [g if isinstance(g, str) and g else c for g, c in zip(records["gpu"], records["cpu"],
                                                                          strict=True)],
        "created": records["created_at"],
    }).sort_values("record").reset_index(drop=True)


#: The tables the book's ``kdlib-table`` directive can render, by name.
TABLES: dict[str, Callable[..., pd.DataFrame]] = {
    "reported-vs-measured": reported_vs_measured,
    "measured": measured,
    "reported-summary": reported_summary,
    "recipes": recipes,
    "teachers": teachers,
    "runs": runs,
    "bench": bench,
    "provenance": provenance,
}


def to_markdown(table: pd.DataFrame) -> str:
    """A Markdown pipe table (cells escaped) of a display table."""
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(map(cell, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])
