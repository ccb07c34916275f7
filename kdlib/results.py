"""Run records in, tidy tables out.

- :func:`load_records`: ``record.json`` files (written by :func:`kdlib.train.train`) → one row per run.
- :func:`summarize`: n, mean, std and a 95% Student-t interval of the mean of last- and best-epoch accuracy
  over seeds, per configuration.
- :func:`compare`: our summaries beside the published numbers of ``data/reported/reported_results.csv``,
  through the committed label mapping ``data/reported/method_map.json``.
- :func:`paired_differences`: per-seed differences to a baseline method (same seeds), with an interval.

Accuracies are in percent, as in the papers. A reported error rate (``top1_err``) is compared as
``100 − err``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from kdlib.distill import taps_agree
from kdlib.methods import get_method, variant_string
from kdlib.paths import METHOD_MAP, REPORTED_CSV

log = logging.getLogger(__name__)


#: Columns taken from each record (nested fields are flattened separately).
RECORD_COLUMNS = (
    "config_id",
    "status",
    "method",
    "variant",
    "teacher",
    "student",
    "dataset",
    "subset",
    "eval_subset",
    "val_subset",
    "recipe_name",
    "seed",
    "subset_seed",
    "teacher_ckpt_sha256",
    "epochs",
    "precision",
    "teacher_top1",
    "top1_last",
    "top5_last",
    "top1_best",
    "top5_best",
    "best_epoch",
    "val_top1_last",
    "wall_time_s",
    "images_per_s",
    "device",
    "torch_version",
    "git_commit",
    "git_dirty",
    "created_at",
    "failure_reason",
    "student_weights",
)
#: What identifies a configuration across seeds (the default ``by`` of :func:`summarize`).
CONFIG_KEYS = ("dataset", "teacher", "student", "method", "variant", "recipe", "epochs", "subset")
STATUS_MEASURED = "measured"
STATUS_NOT_MEASURED = "not yet measured"
STATUS_OUT_OF_SCOPE = "not reproduced (out of scope)"
STATUS_DIVERGED = "diverged"


# --- records --------------------------------------------------------------------------------------
def run_variant(variant: str, student_weights: str | None) -> str:
    """The variant the study groups and compares runs by: the method's options (``variant``), followed by
    ``student_weights=<name>`` when the student did not start from random weights, so that a run from a
    pretrained student is never averaged with, or paired against, runs from scratch. ``<name>`` is
    ``torchvision`` for torchvision's released weights (``torchvision`` or a record's
    ``torchvision:<enum>``), else the weights file's name.
    """
    if not student_weights:
        return variant
    spec = str(student_weights)
    name = "torchvision" if spec.partition(":")[0] == "torchvision" else Path(spec).name
    init = f"student_weights={name}"
    return init if variant == "default" else f"{variant},{init}"


def record_variant(record: dict[str, Any]) -> str:
    """A record's method options as the defaults stand today: :func:`~kdlib.methods.variant_string` of its
    ``method_config``, so a run keeps the label of what it ran when a default changes (IE-KD's λ was 50 by
    default until it became the official code's 1: those runs read ``exp_weight=50.0,inh_weight=50.0``). An
    ICKD or IE-KD record made before the ``tap`` option read RepDistiller's ``feats[-2]``: it is labelled
    ``tap=repdistiller`` where that differs from today's default tap. The stored ``variant`` is the fallback
    when the configuration cannot be rebuilt (no ``method_config``, an unknown method or option)."""
    if not isinstance(record.get("method_config"), dict):
        return record.get("variant") or "default"
    config = dict(record["method_config"])
    try:
        config_class = get_method(record["method"]).config_class
        if "tap" in {f.name for f in dataclasses.fields(config_class)} and "tap" not in config:
            if not taps_agree(record.get("student"), record.get("teacher")):
                config["tap"] = "repdistiller"
        return variant_string(config_class(**config))
    except (KeyError, TypeError, ValueError):
        return record.get("variant") or "default"


def record_recipe(record: dict[str, Any]) -> Any:
    """The recipe name a record is grouped by: its ``recipe_name``, else its ``recipe``'s ``name`` (an object)
    or its ``recipe`` itself."""
    recipe = record.get("recipe")
    return record.get("recipe_name") or (recipe.get("name") if isinstance(recipe, dict) else recipe)


def commit_label(commit: str | None, dirty: bool | None) -> str:
    """A record's code version as shown: the commit's first 10 characters, ``+dirty`` when the working tree
    had changes."""
    return (commit or "")[:10] + ("+dirty" if dirty else "")


def _record_paths(paths_or_dir: str | Path | Iterable[str | Path]) -> list[Path]:
    items = [paths_or_dir] if isinstance(paths_or_dir, str | Path) else list(paths_or_dir)
    found: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found += sorted(item.rglob("record.json"))
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f"no record file or folder at '{item}'")
    return found


def load_records(
    paths_or_dir: str | Path | Iterable[str | Path], statuses: Collection[str] | None = ("completed",)
) -> pd.DataFrame:
    """One row per run record found in ``paths_or_dir`` (files, or folders searched for ``record.json``).

    ``statuses``: keep only records with one of these ``status`` values (``None``: all). By default only
    ``completed`` ones: a record is never taken as complete unless its status says so. Add ``diverged`` to
    count the runs whose loss became non-finite (:func:`summarize` keeps them apart). Unreadable files and
    invalid records (:func:`record_problem`) are skipped with a warning naming them, and so are copies of a
    run already read (same ``config_id`` and seed; the first path in sorted order is kept). Columns: those
    of :data:`RECORD_COLUMNS` (``variant`` as :func:`run_variant` makes it of :func:`record_variant`) plus
    ``recipe`` (the name), ``cpu``, ``gpu``, ``path``.
    """
    rows, seen = [], {}
    for path in _record_paths(paths_or_dir):
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as error:
            log.warning("skipping unreadable record %s: %s", path, error)
            continue
        if statuses is not None and record.get("status") not in statuses:
            continue
        problem = record_problem(record)
        if problem:
            log.warning("skipping invalid record %s: %s", path, problem)
            continue
        run = (record["config_id"], record["seed"])
        if run in seen:
            log.warning("skipping record %s: a copy of %s (config_id %s, seed %s)", path, seen[run], *run)
            continue
        seen[run] = path
        row = {key: record.get(key) for key in RECORD_COLUMNS}
        row["variant"] = run_variant(record_variant(record), row["student_weights"])
        row["recipe"] = record_recipe(record)
        hw = record.get("hardware") or {}
        row.update(cpu=hw.get("cpu"), gpu=hw.get("gpu"), path=str(path))
        rows.append(row)
    columns = [*RECORD_COLUMNS, "recipe", "cpu", "gpu", "path"]
    df = pd.DataFrame(rows, columns=columns)
    for name in (
        "teacher_top1",
        "top1_last",
        "top5_last",
        "top1_best",
        "top5_best",
        "val_top1_last",
        "wall_time_s",
        "images_per_s",
    ):
        df[name] = pd.to_numeric(df[name], errors="coerce").astype(float)
    return df


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _string_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str)


#: Fields besides the required strings that group records (:data:`CONFIG_KEYS`, :func:`comparison_groups`,
#: :func:`paired_differences`) or that ``verify`` reads from a record's ``hardware``: what each must be, and
#: the test. The recipe is checked apart (:func:`record_recipe`: a name or null).
GROUPING_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "teacher": ("a string or null", _string_or_none),
    "epochs": ("an integer >= 1", _is_count),
    "subset": ("an integer >= 1 or null", lambda v: v is None or _is_count(v)),
    "recipe_name": ("a string or null", _string_or_none),
    "student_weights": ("a string or null", _string_or_none),
}
#: The fields of a record's ``hardware`` that ``verify`` reads, as :data:`GROUPING_FIELDS` checks its own.
HARDWARE_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "cpu": ("a string or null", _string_or_none),
    "cpu_flags": ("a list of strings or null",
                  lambda v: v is None or isinstance(v, list) and all(isinstance(f, str) for f in v)),
    "torch_threads": ("an integer >= 1 or null", lambda v: v is None or _is_count(v)),
}


def _field_problem(values: dict[str, Any], fields: dict[str, tuple[str, Callable[[Any], bool]]],
                   prefix: str = "") -> str | None:
    """The first of ``fields`` whose value in ``values`` fails its test, in words (None if none does)."""
    for name, (allowed, test) in fields.items():
        if not test(values.get(name)):
            return f"{prefix}{name} must be {allowed}, got {values.get(name)!r}"
    return None


def record_problem(record: dict[str, Any]) -> str | None:
    """Why ``record`` cannot be counted (None if it can): the identifying fields must be there, the seed an
    integer, the fields that group records of the types :data:`GROUPING_FIELDS` says (a record with ``epochs``
    ``"5"`` would otherwise form a group of its own; ``subset`` ``[1]`` would break :func:`summarize`), the
    recipe (:func:`record_recipe`) a name, ``hardware`` an object whose fields are as
    :data:`HARDWARE_FIELDS` says, and a ``completed`` record must have finite accuracies."""
    missing = [k for k in ("config_id", "status", "method", "variant", "dataset", "student")
               if not isinstance(record.get(k), str)]
    if missing:
        return f"missing or not a string: {', '.join(missing)}"
    if not isinstance(record.get("seed"), int) or isinstance(record.get("seed"), bool):
        return f"seed must be an integer, got {record.get('seed')!r}"
    problem = _field_problem(record, GROUPING_FIELDS)
    if problem:
        return problem
    if not _string_or_none(record_recipe(record)):
        return f"recipe must be a name or an object with a string 'name', got {record.get('recipe')!r:.80}"
    hardware = record.get("hardware") or {}
    if not isinstance(hardware, dict):
        return f"hardware must be an object, got {record.get('hardware')!r}"
    problem = _field_problem(hardware, HARDWARE_FIELDS, "hardware.")
    if problem:
        return problem
    if record["status"] == "completed":
        bad = [k for k in ("top1_last", "top1_best", "top5_last") if not _is_number(record.get(k))]
        if bad:
            return f"a completed record without a finite {', '.join(bad)}"
    return None


# --- statistics -----------------------------------------------------------------------------------
def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean, ``mean ± t(n−1)·s/√n`` (NaN values dropped; NaN for fewer than 2).

    With the 3 seeds of a study the t quantile is 4.30: the interval is wide, as it should be. A percentile
    bootstrap would be narrower but covers the mean of 3 normal draws at most 75% of the time, not 95%.
    """
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    mean = float(x.mean())
    return mean - half, mean + half


def summarize(
    df: pd.DataFrame,
    by: Sequence[str] | None = None,
    metrics: Sequence[str] = ("top1_last", "top1_best", "top5_last"),
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per configuration (``by``, default :data:`CONFIG_KEYS`): ``n`` (the runs each mean is over: not
    diverged, with a value of the first metric), ``diverged`` (runs
    whose ``status`` is ``diverged``: they count, but have no accuracy), and for each metric ``<m>_mean``,
    ``<m>_std`` (sample std, NaN for n = 1), ``<m>_lo``/``<m>_hi`` (:func:`mean_interval`; NaN for n = 1),
    plus ``seeds`` (sorted list) and ``teacher_top1_mean``."""
    by = list(by) if by is not None else [k for k in CONFIG_KEYS if k in df.columns]
    rows = []
    for key, group in df.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = {k: (None if _isnan(v) else v) for k, v in zip(by, key, strict=True)}
        status = group["status"] if "status" in group else pd.Series("completed", index=group.index)
        row["diverged"] = int((status == STATUS_DIVERGED).sum())
        if "teacher_top1" in group:  # evaluated before training: diverged runs measured it too
            t = group["teacher_top1"].astype(float)
            row["teacher_top1_mean"] = float(t.mean()) if t.notna().any() else math.nan
        group = group[status != STATUS_DIVERGED]
        if metrics and metrics[0] in group:  # n: the runs the first metric's mean is over
            group = group[group[metrics[0]].notna()]
        row["n"] = len(group)
        if "seed" in group:
            row["seeds"] = sorted(int(s) for s in group["seed"].dropna())
        for metric in metrics:
            values = group[metric].astype(float).to_numpy()
            lo, hi = mean_interval(values, confidence)
            row.update(
                {
                    f"{metric}_mean": float(np.nanmean(values)) if len(values) else math.nan,
                    f"{metric}_std": float(np.nanstd(values, ddof=1)) if len(values) > 1 else math.nan,
                    f"{metric}_lo": lo,
                    f"{metric}_hi": hi,
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _isnan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def paired_differences(
    df: pd.DataFrame,
    baseline: tuple[str, str] = ("kd", "default"),
    metric: str = "top1_last",
    by: Sequence[str] = ("dataset", "teacher", "student", "recipe", "epochs", "subset"),
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Each (method, variant) minus ``baseline`` on the same configuration and seed: n, mean, interval.

    A run without a teacher (``ce``, as a method or as the baseline) is paired with the other side's runs
    of every teacher, and reported under that teacher. Diverged runs (``status``) have no accuracy and are
    left out.
    """
    by = [k for k in by if k in df.columns]
    if "status" in df:
        df = df[df["status"] != STATUS_DIVERGED]
    is_base = (df["method"] == baseline[0]) & (df["variant"] == baseline[1])
    base, others = df[is_base], df[~is_base]
    keys = [k for k in by if k != "teacher"]
    base = base[[*keys, "seed", metric, *(["teacher"] if "teacher" in by else [])]].rename(
        columns={metric: "baseline", "teacher": "base_teacher"})
    merged = others.merge(base, on=[*keys, "seed"], how="inner")
    if "teacher" in by:  # same teacher, or one side has none; a teacherless run takes the other's teacher
        same = merged["teacher"].isna() | merged["base_teacher"].isna() | (merged["teacher"]
                                                                          == merged["base_teacher"])
        merged = merged[same].assign(teacher=merged["teacher"].fillna(merged["base_teacher"]))
    merged["difference"] = merged[metric].astype(float) - merged["baseline"].astype(float)
    rows = []
    for key, group in merged.groupby([*by, "method", "variant"], dropna=False, sort=True):
        row = {k: (None if _isnan(v) else v) for k, v in zip([*by, "method", "variant"], key, strict=True)}
        d = group["difference"].to_numpy()
        lo, hi = mean_interval(d, confidence)
        row.update(
            baseline=f"{baseline[0]}/{baseline[1]}",
            metric=metric,
            n=len(d),
            mean=float(d.mean()),
            std=float(d.std(ddof=1)) if len(d) > 1 else math.nan,
            lo=lo,
            hi=hi,
            seeds=sorted(int(s) for s in group["seed"]),
        )
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_groups(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Records (a :func:`load_records` frame) split into comparable groups: same dataset, teacher, student,
    recipe, epochs and training subset, each with a title; methods are ranked within a group only. Runs
    without a teacher (``ce``) join every group of their student."""
    if not len(df):
        return []
    keys = ["dataset", "student", "recipe", "epochs", "subset"]
    alone = df[df["teacher"].isna()]
    groups = []
    for key, group in df[df["teacher"].notna()].groupby([*keys, "teacher"], dropna=False, sort=True):
        values = dict(zip([*keys, "teacher"], key, strict=True))
        same = pd.Series(True, index=alone.index)
        for k in keys:
            column = alone[k]
            same &= column.isna() if _isnan(values[k]) else column == values[k]
        subset = "all" if _isnan(values["subset"]) else int(values["subset"])
        title = (f"{values['dataset']}: {values['teacher']} → {values['student']}, {int(values['epochs'])} "
                 f"epochs ({values['recipe']}), {subset} training images")
        groups.append((title, pd.concat([group, alone[same]], ignore_index=True)))
    return groups


# --- published numbers ----------------------------------------------------------------------------
def load_method_map(path: str | Path | None = None) -> dict[str, Any]:
    """The committed mapping of reported labels and dataset names to ours (``method_map.json``)."""
    return json.loads(Path(path or METHOD_MAP).read_text())


def parse_reported_value(text: Any) -> float:
    """The leading number of a reported value (``"70.04*"`` → 70.04; ``"0.00 (… N/A)"`` → NaN)."""
    if isinstance(text, int | float):
        return float(text)
    match = re.match(r"\s*(-?\d+(?:\.\d+)?)", str(text))
    if not match or "N/A" in str(text):
        return math.nan
    return float(match.group(1))


def reported_qualifier(text: Any) -> str:
    """What a reported value says beside its number (``"74.3 (final epoch)"`` → ``"(final epoch)"``)."""
    match = re.match(r"\s*-?\d+(?:\.\d+)?(.*)", str(text))
    return (match.group(1) if match else str(text)).strip()


def _caveat(note: Any, value: Any, metric: str, qualifier: str) -> str | None:
    """One sentence of what a reader must know about a reported row: the accuracy is ``100 − error`` when
    the source published an error rate; the value as published when it has a qualifier; the mapping's note."""
    parts = []
    if metric.endswith("_err"):  # the published text, qualifier included
        parts.append(f"100 − the published {metric.split('_')[0].replace('top', 'top-')} error {value}")
    elif qualifier:
        parts.append(f"published as {value}")
    if isinstance(note, str) and note:
        parts.append(note)
    return "; ".join(parts) or None


def map_reported(reported: pd.DataFrame, mapping: dict[str, Any]) -> pd.DataFrame:
    """Add ``dataset_id``, ``method_id``, ``variant``, ``role``, ``scope``, ``note``, ``reported_acc``,
    ``converted``, ``qualifier`` and ``caveat``.

    Methods map by (paper, dataset, label) first, then (paper, label), then label alone; ``role`` is
    ``teacher`` for rows that report the teacher itself (compared with a ``ce`` run of the teacher
    architecture). ``converted`` is True where the source published an error rate, so ``reported_acc`` is
    ``100 − error`` (CD's 20.08 → 79.92); ``qualifier`` is what the published value says beside its number
    (``(final epoch)``, ``*``); ``caveat`` puts both and the mapping's ``note`` in words,
    for tables to show beside the number.
    """
    datasets = mapping["datasets"]
    out_of_scope = set(mapping.get("out_of_scope_datasets", []))
    entries = mapping["methods"]

    def lookup(paper: str, dataset: str, label: str) -> dict[str, Any] | None:
        for want_paper, want_dataset in ((paper, dataset), (paper, None), (None, None)):
            for entry in entries:
                if (
                    entry["label"] == label
                    and entry.get("paper") == want_paper
                    and entry.get("dataset") == want_dataset
                ):
                    return entry
        return None

    df = reported.copy()
    extra = []
    for row in df.itertuples(index=False):
        entry = lookup(row.paper, row.dataset, row.method)
        metric = str(row.metric)
        value = parse_reported_value(row.value)
        acc = value if metric.endswith("_acc") else 100 - value if metric.endswith("_err") else math.nan
        extra.append(
            {
                "dataset_id": datasets.get(row.dataset),
                "method_id": entry.get("method") if entry else None,
                "variant": entry.get("variant", "default") if entry and entry.get("method") else None,
                "role": entry.get("role", "student") if entry else None,
                "scope": "out" if row.dataset in out_of_scope else "in",
                "note": entry.get("note") if entry else None,
                "reported_acc": acc,
                "converted": metric.endswith("_err"),
                "qualifier": reported_qualifier(row.value),
                "caveat": _caveat(entry.get("note") if entry else None, row.value, metric,
                                  reported_qualifier(row.value)),
                "metric_kind": "top5"
                if metric.startswith("top5")
                else "top1"
                if metric.startswith("top1")
                else None,
            }
        )
    return pd.concat([df.reset_index(drop=True), pd.DataFrame(extra)], axis=1)


#: The columns of :func:`compare`, in order.
COMPARE_COLUMNS = (
    "paper", "dataset", "teacher", "student", "teacher_id", "student_id", "method", "metric", "value",
    "reported_acc", "dataset_id", "method_id", "variant", "role", "status", "n", "diverged", "recipe",
    "epochs", "subset", "measured_last", "measured_last_lo", "measured_last_hi", "measured_best",
    "measured_best_lo", "measured_best_hi", "diff_last", "diff_best", "note", "converted", "qualifier",
    "caveat", "source",
)
_NO_TEACHER = "-"  # one sentinel on both sides: merge keys never rely on None/NaN matching


def _join_keys(rep: pd.DataFrame, summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The reported rows and the measured summary, each with the ``_teacher`` (and reported ``_student``)
    join key: a ``ce`` run matches on the student only; a reported teacher row matches a ``ce`` run of the
    teacher architecture."""
    rep = rep.copy()
    rep["_row"] = np.arange(len(rep))
    rep["_student"] = np.where(rep["role"] == "teacher", rep["teacher_id"], rep["student_id"])
    rep["_teacher"] = np.where(rep["method_id"] == "ce", _NO_TEACHER, rep["teacher_id"].fillna(_NO_TEACHER))
    measured = summary.copy()
    if "teacher" not in measured:
        measured["teacher"] = None
    measured["_teacher"] = np.where(
        measured["method"] == "ce",
        _NO_TEACHER,
        measured["teacher"].astype(object).where(measured["teacher"].notna(), _NO_TEACHER),
    )
    keep = [
        c
        for c in measured.columns
        if c.startswith(("top1_", "top5_")) or c in ("n", "diverged", "recipe", "epochs", "subset", "seeds")
    ]
    return rep, measured[["dataset", "_teacher", "student", "method", "variant", *keep]]


def _measured_columns(joined: pd.DataFrame) -> None:
    """``measured_last``/``measured_best`` (top-1 or top-5 by the reported metric) with their intervals,
    ``diff_*`` = measured − reported, and ``status``."""
    for stat in ("mean", "lo", "hi"):
        for which in ("last", "best"):
            top1, top5 = f"top1_{which}_{stat}", f"top5_{which}_{stat}"
            col = f"measured_{which}" if stat == "mean" else f"measured_{which}_{stat}"
            t1 = joined[top1] if top1 in joined else np.nan
            t5 = joined[top5] if top5 in joined else np.nan
            joined[col] = np.where(joined["metric_kind"] == "top5", t5, t1)
    joined["diff_last"] = joined["measured_last"] - joined["reported_acc"]
    joined["diff_best"] = joined["measured_best"] - joined["reported_acc"]

    def count(column: str) -> pd.Series:
        return joined[column].fillna(0) if column in joined else pd.Series(0, index=joined.index)

    joined["status"] = np.select(
        [joined["scope"] == "out", count("n") > 0, count("diverged") > 0],
        [STATUS_OUT_OF_SCOPE, STATUS_MEASURED, STATUS_DIVERGED],
        STATUS_NOT_MEASURED,
    )


def compare(
    summary: pd.DataFrame,
    reported: pd.DataFrame | str | Path | None = None,
    mapping: dict[str, Any] | str | Path | None = None,
) -> pd.DataFrame:
    """Every reported row beside the matching measured summary row(s), with a ``status`` column.

    Join keys: dataset, teacher_id, student_id, method and variant (a ``ce`` run matches on the student
    only; a reported teacher row matches a ``ce`` run of the teacher architecture). Statuses: ``measured``,
    ``not yet measured`` (unmapped labels too: their ``method_id`` is empty), ``not reproduced (out of
    scope)`` (segmentation, detection), ``diverged`` (every run of the configuration did). Measured columns:
    ``n``, ``diverged``, ``measured_last``, ``measured_best`` (top-1 or top-5 by the reported metric) with
    their intervals, ``diff_last``/``diff_best`` = measured − reported. Filter ``summary`` first (e.g.
    full-data runs of one recipe): every match is kept.
    """
    if reported is None or isinstance(reported, str | Path):
        reported = pd.read_csv(reported or REPORTED_CSV, dtype=str, keep_default_na=False, na_values=[""])
    if not isinstance(mapping, dict):
        mapping = load_method_map(mapping)
    rep, measured = _join_keys(map_reported(reported, mapping), summary)
    joined = rep.merge(
        measured,
        how="left",
        left_on=["dataset_id", "_teacher", "_student", "method_id", "variant"],
        right_on=["dataset", "_teacher", "student", "method", "variant"],
        suffixes=("", "_measured"),
    )
    _measured_columns(joined)
    for c in COMPARE_COLUMNS:
        if c not in joined:
            joined[c] = None
    return joined.sort_values("_row", kind="stable")[list(COMPARE_COLUMNS)].reset_index(drop=True)
