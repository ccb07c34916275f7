"""Tables for people: the book's and the notebooks' views of ``data/`` (through :mod:`kdlib.results`).

Every function returns a :class:`pandas.DataFrame` of display strings, rendered by the book's
``kdlib-table`` directive (:func:`to_markdown`) and shown as is in the notebooks, so both say the same thing.
A number shown is either a paper's (its ``source`` column) or a run's (its record, see :func:`provenance`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from kdlib import plots, results, stats
from kdlib.methods import CHANNEL_METHODS, options_in_words
from kdlib.paths import BENCH_CSV, PRECISION_CSV, REPORTED_CSV, RESULTS_DIR, relative
from kdlib.recipes import available_recipes, get_recipe

NOT_MEASURED = results.STATUS_NOT_MEASURED


#: The statuses the book and the notebooks show (diverged runs are counted, never averaged).
SHOWN = ("completed", results.STATUS_DIVERGED)


#: Folders of ``data/results/`` that the study's version-1 tables do not read: the smoke profile's records
#: (git-ignored, a test of the pipeline) and the second and third proxy studies' (their own pages).
SEPARATE = ("smoke", "proxy_v2", "proxy_v3")


def study_records(path: str | Path = RESULTS_DIR) -> pd.DataFrame:
    """Completed and diverged records under ``data/results/`` (an empty table when there are none), but for
    the :data:`SEPARATE` folders, which are read only when ``path`` names them."""
    path = Path(path)
    if not path.exists():
        return results.load_records([], statuses=SHOWN)
    if path.resolve() == RESULTS_DIR.resolve():
        return results.load_records([p for p in sorted(path.iterdir()) if p.name not in SEPARATE],
                                    statuses=SHOWN)
    return results.load_records(path, statuses=SHOWN)


def _completed(records: pd.DataFrame) -> pd.DataFrame:
    return records[records["status"] == "completed"] if "status" in records else records


def number(value: float | None, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, or empty when it is missing."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def mean_ci(mean: float, lo: float, hi: float, n: float, diverged: float = 0) -> str:
    """``mean ± half-width`` of the 95% interval (symmetric: Student-t); the interval is left out for a
    single run; ``diverged`` when every run did. The number of runs is a column of its own."""
    if mean is None or math.isnan(mean):
        return results.STATUS_DIVERGED if diverged else NOT_MEASURED
    interval = f" ± {number((hi - lo) / 2)}" if int(n) > 1 else ""
    return f"{number(mean)}{interval}"


def _runs(n: float | None) -> str:
    """The number of runs a mean is over (empty when there are none)."""
    return "" if n is None or (isinstance(n, float) and math.isnan(n)) or not n else str(int(n))


def _diverged(diverged: float, n: float) -> str:
    """``k of m runs`` where some runs of a configuration diverged, else empty."""
    diverged = 0 if diverged is None or math.isnan(diverged) else int(diverged)
    return f"{diverged} of {diverged + int(n or 0)} runs" if diverged else ""


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
        return [mean_ci(m, lo, hi, n) if ok else status for m, lo, hi, n, ok, status in cells]

    diverged_here = rows["status"].isin([results.STATUS_MEASURED, results.STATUS_DIVERGED])

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
        "ours: seeds": [_runs(n) if ok else "" for n, ok in zip(rows["n"], measured_here, strict=True)],
        "ours: diverged": [_diverged(d, n) if here else "" for d, n, here in
                           zip(rows["diverged"], rows["n"], diverged_here, strict=True)],
        "caveat": rows["caveat"].fillna(""),
        "source": rows["source"],
    })
    return table.reset_index(drop=True)


def _empty_summary() -> pd.DataFrame:
    return pd.DataFrame(columns=[*results.CONFIG_KEYS, "n", "diverged", "top1_last_mean", "top1_best_mean"])


def measured(records: pd.DataFrame | None = None, methods: list[str] | None = None) -> pd.DataFrame:
    """Our measurements per configuration: mean, 95% interval and n of last- and best-epoch top-1, and how
    many runs diverged (non-finite loss; they have no accuracy)."""
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
        **{f"top-1, {which} epoch": [
            mean_ci(*v) for v in zip(summary[f"top1_{which}_mean"], summary[f"top1_{which}_lo"],
                                      summary[f"top1_{which}_hi"], summary["n"], summary["diverged"],
                                      strict=True)]
           for which in ("last", "best")},
        "seeds": [_runs(n) for n in summary["n"]],
        "diverged": [_diverged(d, n) for d, n in zip(summary["diverged"], summary["n"], strict=True)],
        "teacher top-1": [number(v) for v in summary["teacher_top1_mean"]],
    })


def _verdict(lo: float, hi: float, n: int, baseline: str) -> str:
    """What a paired interval allows to say (protocol: a gap whose interval contains zero is noise)."""
    if n < 2:
        return "one seed: no interval"
    if lo > 0:
        return f"above {baseline}"
    if hi < 0:
        return f"below {baseline}"
    return "within the noise"


def paired(records: pd.DataFrame | None = None, baseline: str = "kd",
           methods: list[str] | None = None) -> pd.DataFrame:
    """Each method and variant minus ``baseline`` on the same seeds, per comparable group (best first): mean,
    95% Student-t interval and n of the paired difference in last- and best-epoch top-1, what the
    last-epoch interval allows to say, and how many runs diverged (no accuracy, so no difference).
    ``methods``: only the rows of these methods (the baseline is paired against all the same)."""
    records = study_records() if records is None else records
    table = _paired(records, baseline)
    return table[table["method"].isin(methods)].reset_index(drop=True) if methods and len(table) else table


def _paired(records: pd.DataFrame, baseline: str) -> pd.DataFrame:
    rows = []
    for _, group in results.comparison_groups(records):
        base = (baseline, "default")
        has_base = ((group["method"] == baseline) & (group["variant"] == "default")
                    & (group["status"] == "completed"))
        if not has_base.any():
            continue
        b = group[has_base].iloc[0]
        where = {"pair": pair(b["teacher"], b["student"]),
                 "scale": scale(b["dataset"], b["subset"], b["epochs"], b["recipe"])}
        last, best = (results.paired_differences(group, baseline=base, metric=f"top1_{which}")
                      for which in ("last", "best"))
        best = best.set_index(["method", "variant"])
        summary = results.summarize(group, by=["method", "variant"]).set_index(["method", "variant"])
        for r in last.sort_values("mean", ascending=False).itertuples():
            at_best = best.loc[(r.method, r.variant)]
            rows.append({
                "method": r.method, "variant": r.variant, **where,
                f"top-1 minus {baseline}, last epoch": mean_ci(r.mean, r.lo, r.hi, r.n),
                f"top-1 minus {baseline}, best epoch": mean_ci(at_best["mean"], at_best["lo"], at_best["hi"],
                                                                at_best["n"]),
                "seeds": _runs(r.n),
                "last epoch: verdict": _verdict(r.lo, r.hi, r.n, baseline),
                "diverged": _diverged(summary.loc[(r.method, r.variant), "diverged"], r.n),
            })
        done = set(zip(last["method"], last["variant"], strict=True)) | {base}
        for (method, variant), s in summary.iterrows():
            if (method, variant) not in done:  # every run diverged
                rows.append({"method": method, "variant": variant, **where,
                             f"top-1 minus {baseline}, last epoch": results.STATUS_DIVERGED,
                             f"top-1 minus {baseline}, best epoch": results.STATUS_DIVERGED,
                             "seeds": "", "last epoch: verdict": "",
                             "diverged": _diverged(s["diverged"], s["n"])})
    return pd.DataFrame(rows)


def findings(records: pd.DataFrame | None = None, baseline: str = "kd") -> pd.DataFrame:
    """:func:`paired` read as one line per verdict and comparable group: the configurations above and below
    ``baseline`` beyond seed noise (with their last-epoch difference), those within the noise, and those
    whose every run diverged."""
    table = paired(records, baseline)
    if table.empty:
        return table
    difference = f"top-1 minus {baseline}, last epoch"
    every_run_diverged = "diverged on every seed"
    table["finding"] = table["last epoch: verdict"].where(table[difference] != results.STATUS_DIVERGED,
                                                          every_run_diverged)
    order = (f"above {baseline}", f"below {baseline}", "within the noise", "one seed: no interval",
             every_run_diverged)
    rows = []
    for (where, size), group in table.groupby(["pair", "scale"], sort=False):
        for finding in order:
            chosen = group[group["finding"] == finding]
            if not len(chosen):
                continue
            named = [f"{m}/{v}" + (f" ({d.split(' ±')[0]})" if finding in order[:2] else "")
                     for m, v, d in zip(chosen["method"], chosen["variant"], chosen[difference], strict=True)]
            rows.append({"pair": where, "scale": size, "finding": finding, "configurations": len(chosen),
                         "which": ", ".join(named)})
    return pd.DataFrame(rows)


def _names(rows: pd.DataFrame, difference: str | None = None) -> str:
    """``ce (−1.95), iekd (exp_weight 50, inh_weight 50) (−3.97)``: configurations as readers name them
    (:func:`kdlib.methods.options_in_words`), with their mean difference if ``difference`` is given."""
    return ", ".join(options_label(m, v) + (f" ({d.split(' ±')[0]})" if difference else "")
                     for m, v, d in zip(rows["method"], rows["variant"],
                                        rows[difference] if difference else rows["method"], strict=True))


def answer(records: pd.DataFrame | None = None, baseline: str = "kd") -> str:
    """The study's answer in a few sentences (Markdown), per comparable group, from :func:`paired`: which
    configurations beat ``baseline`` beyond seed noise, which fall below it, how many are within the noise,
    which diverged, and at what scale; generated from the records, so it stays true when they change."""
    records = study_records() if records is None else records
    table = paired(records, baseline)
    if table.empty:
        return "No committed run has a KD run on the same seeds to pair with yet: no answer yet."
    difference = f"top-1 minus {baseline}, last epoch"
    paragraphs = []
    for (where, size), group in table.groupby(["pair", "scale"], sort=False):
        verdict = group["last epoch: verdict"]
        above, below = group[verdict == f"above {baseline}"], group[verdict == f"below {baseline}"]
        noise = group[verdict == "within the noise"]
        diverged = group[group[difference] == results.STATUS_DIVERGED]
        seeds = "/".join(sorted(set(group["seeds"]) - {""}))
        lead = (f"**{len(above)} of {len(group)} configurations beat {baseline.upper()} beyond seed noise**: "
                f"{_names(above, difference)}." if len(above) else
                f"**No method or variant beats {baseline.upper()} beyond seed noise.**")
        parts = [f"{lead} At {size}, {where}, {seeds} paired seeds each: {len(noise)} of {len(group)} "
                 f"configurations are within the noise of {baseline.upper()}"]
        if len(below):
            parts.append(f"{len(below)} are below it (top-1 points, last epoch): {_names(below, difference)}")
        if len(diverged):
            parts.append(f"{len(diverged)} diverged on every seed: {_names(diverged)}")
        paragraphs.append("; ".join(parts) + ".")
    full = records["dataset"].isin(["cifar100", "imagenet"]).any() if len(records) else False
    if not full:
        paragraphs.append("No run at the papers' scale (CIFAR-100, ImageNet) is committed yet, so these "
                          "numbers say nothing about whether a paper's result reproduces, nor how the "
                          "methods rank there.")
    return "\n\n".join(paragraphs)


def ranking(records: pd.DataFrame | None = None, baseline: str = "kd", absolute: bool = True) -> list[Figure]:
    """Per comparable group, the ranking of :func:`paired` as a figure (difference to ``baseline``, 95%
    interval) when the group has the baseline, and (``absolute``) the last-epoch top-1 with its interval."""
    records = study_records() if records is None else records
    figures = []
    for title, group in results.comparison_groups(_completed(records)):
        if ((group["method"] == baseline) & (group["variant"] == "default")).any():
            diffs = results.paired_differences(group, baseline=(baseline, "default"))
            xlabel = f"top-1 (last epoch) minus {baseline.upper()}, same seeds"
            figures.append(plots.ranking(diffs, xlabel=xlabel, title=title))
        if not absolute:
            continue
        summary = results.summarize(group)
        figures.append(plots.ranking(summary, value="top1_last_mean", lo="top1_last_lo", hi="top1_last_hi",
                                     xlabel="top-1, last epoch (%)", title=title, reference=None))
    return figures


def reported_summary(datasets: tuple[str, ...] = ("CIFAR-100",)) -> pd.DataFrame:
    """The channel methods' (:data:`~kdlib.methods.CHANNEL_METHODS`) own headline numbers: method × pair, as
    each paper reports them (third-party reproductions, kept in the CSV under their own ``paper`` label, are
    left out: they are in the method chapters)."""
    reported = pd.read_csv(REPORTED_CSV, dtype=str, keep_default_na=False)
    mapped = results.map_reported(reported, results.load_method_map())
    rows = mapped[mapped["method_id"].isin(CHANNEL_METHODS) & mapped["dataset"].isin(datasets)
                  & mapped["metric"].str.startswith("top1")
                  & ~mapped["paper"].str.contains("3rd-party|reproduction", case=False)]
    return pd.DataFrame({
        "method": [f"{m}/{v}" for m, v in zip(rows["method_id"], rows["variant"], strict=True)],
        "as reported": rows["method"],
        "pair": [pair(t, s) for t, s in zip(rows["teacher_id"], rows["student_id"], strict=True)],
        "dataset": rows["dataset"],
        "reported top-1": [number(v) for v in rows["reported_acc"]],
        "caveat": rows["caveat"].fillna(""),
        "paper": rows["paper"],
    }).reset_index(drop=True)


def recipes() -> pd.DataFrame:
    """Every named recipe with every field (what a run with ``--recipe NAME`` uses): one row per field, one
    column per recipe, so the table stays as narrow as the number of recipes."""
    columns = {}
    for name in available_recipes():
        recipe = get_recipe(name)
        columns[name] = [_cell(getattr(recipe, f.name)) for f in dataclasses.fields(recipe)]
    fields = [f.name for f in dataclasses.fields(get_recipe(available_recipes()[0]))]
    table = pd.DataFrame({"field": fields, **columns})
    table = table[table["field"] != "name"]
    # a recipe's source cites sections of the authors' working notes, which are not part of the repository
    # ("methods.md section N"): they are left out of the book, the commit stays
    return table.replace(r"\s*\(methods\.md section \d+\)|methods\.md section \d+;\s*", "", regex=True
                         ).reset_index(drop=True)


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
        "measured top-1": number(group["teacher_top1"].mean()),
        "runs": len(group),
    } for (dataset, teacher), group in grouped])


def runs(records: pd.DataFrame | None = None) -> pd.DataFrame:
    """Hardware and wall times of the committed runs, per dataset, recipe and device."""
    records = _completed(study_records() if records is None else records)
    if not len(records):
        return pd.DataFrame()
    keys = ["dataset", "recipe", "epochs", "device", "cpu", "gpu"]
    rows = []
    for key, group in records.groupby(keys, dropna=False, sort=True):
        row = dict(zip(keys, (_cell(None if pd.isna(k) else k) for k in key), strict=True))
        row.update({"runs": len(group), "median wall time (s)": number(group["wall_time_s"].median(), 0),
                    "median images/s": number(group["images_per_s"].median(), 0)})
        rows.append(row)
    return pd.DataFrame(rows)


def bench(path: str | Path = BENCH_CSV) -> pd.DataFrame:
    """The benchmark rows of ``bench/results.csv``, as measured (never estimated): one row per measured pair
    with what a reader compares (``bench/results.csv`` keeps all its fields, the command included)."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame()
    rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    if rows.empty:
        return rows
    return pd.DataFrame({
        "measured": [f"{d[:10]}, {c}" for d, c in zip(rows["date"], rows["commit"], strict=True)],
        "device": rows["device_name"],
        "pair": rows["pair"],
        "our path": [s.split(" fused_sgd")[0] for s in rows["ours_settings"]],  # precision, layout, forward
        "reference ms": rows["reference_ms"],
        "ours ms": rows["ours_ms"],
        "bare ms": rows["bare_ms"],
        "speedup": rows["speedup"],
        "overhead vs bare %": rows["overhead_vs_bare_pct"],
    })


def precision(path: str | Path = PRECISION_CSV) -> pd.DataFrame:
    """bf16 against fp32 (``bench/precision.py``): per method, the mean paired difference of the last epoch's
    test top-1 over the seeds, its 95% interval and paired t-test, and what it says at that n; and fp32 on
    that CPU against study v2's fp32 records made on another CPU type, for scale."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame()
    rows = pd.read_csv(path)

    def verdict(low: float, high: float) -> str:
        if low > 0 or high < 0:
            return "higher" if low > 0 else "lower"
        return "no difference detected"

    def compared(comparison: str, a_cpu: str, b_cpu: str) -> str:
        first, second = comparison.split(" - ")
        a_cpu, b_cpu = (cpu.replace("(R)", "").replace(" Processor", "") for cpu in (a_cpu, b_cpu))
        if a_cpu == b_cpu:
            return f"{first} − {second} on {a_cpu}"
        return f"{first} on {a_cpu} − {second} on {b_cpu}"

    return pd.DataFrame({
        "runs compared": [compared(*row) for row in zip(rows["comparison"], rows["a_cpu"], rows["b_cpu"],
                                                        strict=True)],
        "method": rows["method"],
        "seeds": rows["seeds"],
        "top-1": [f"{number(a)} − {number(b)}" for a, b in zip(rows["a_mean"], rows["b_mean"], strict=True)],
        "difference [95% CI]": [f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]" for d, lo, hi in
                                zip(rows["mean_difference"], rows["ci_low"], rows["ci_high"], strict=True)],
        "p": [stats.format_p(p) for p in rows["p"]],
        "verdict": [verdict(lo, hi) for lo, hi in zip(rows["ci_low"], rows["ci_high"], strict=True)],
    })


def precision_answer(path: str | Path = PRECISION_CSV) -> str:
    """What :func:`precision` shows, in words: whether bf16 moved any method's accuracy beyond the noise of
    its seeds, how far its intervals reach, and for scale how far a change of CPU type moved fp32's."""
    path = Path(path)
    if not path.exists():
        return "bf16 has not been measured against fp32 yet."
    rows = pd.read_csv(path)
    same, other = rows[rows["comparison"] == "bf16 - fp32"], rows[rows["comparison"] == "fp32 - fp32"]
    each = "; ".join(f"{m.upper()} {d:+.2f} [{lo:+.2f}, {hi:+.2f}]" for m, d, lo, hi in zip(
        same["method"], same["mean_difference"], same["ci_low"], same["ci_high"], strict=True))
    moved = same[(same["ci_low"] > 0) | (same["ci_high"] < 0)]
    found = (f"bf16 moved {', '.join(m.upper() for m in moved['method'])} beyond the noise of the seeds"
             if len(moved) else "No difference between bf16 and fp32 was detected for any method")
    worst = same.loc[same["ci_low"].idxmin()]
    text = (f"{found} ({int(same['seeds'].min())} paired seeds; bf16 − fp32 in points of test top-1, with "
            f"95% intervals: {each}). The intervals still allow bf16 to cost up to {-worst['ci_low']:.2f} "
            f"points ({worst['method'].upper()}).")
    if len(other):
        text += (f" For scale, the same fp32 runs on another CPU type moved a method's mean by at most "
                 f"{other['mean_difference'].abs().max():.2f} points.")
    return text


def hardware(records: pd.DataFrame) -> list[str]:
    """Each record's GPU, or its CPU where it ran on none."""
    return [g if isinstance(g, str) and g else c for g, c in zip(records["gpu"], records["cpu"], strict=True)]


def provenance(records: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every committed run: its record, commit, seed and hardware."""
    records = study_records() if records is None else records
    if not len(records):
        return pd.DataFrame()
    paths = [relative(Path(p).parent) for p in records["path"]]
    under = os.path.commonpath(paths) if len(paths) > 1 else str(Path(paths[0]).parent)
    return pd.DataFrame({
        "records under": under,
        "record (folder)": [os.path.relpath(p, under) for p in paths],
        "pair": [pair(t, s) for t, s in zip(records["teacher"], records["student"], strict=True)],
        "status": [f"{s} ({reason})" if s == results.STATUS_DIVERGED and reason else s
                   for s, reason in zip(records["status"], records["failure_reason"], strict=True)],
        "top-1 last": [number(v) for v in records["top1_last"]],
        "commit": [results.commit_label(c, d) for c, d in
                   zip(records["git_commit"], records["git_dirty"], strict=True)],
        "hardware": hardware(records),
        "created": records["created_at"].astype(str).str[:10],
    }).sort_values("record (folder)").reset_index(drop=True)


#: The tables the book's ``kdlib-table`` directive can render, by name.
TABLES: dict[str, Callable[..., pd.DataFrame]] = {
    "reported-vs-measured": reported_vs_measured,
    "measured": measured,
    "paired": paired,
    "findings": findings,
    "reported-summary": reported_summary,
    "recipes": recipes,
    "teachers": teachers,
    "runs": runs,
    "bench": bench,
    "precision": precision,
    "provenance": provenance,
}


def difference_text(records: pd.DataFrame | None = None, baseline: str = "kd") -> dict[str, str]:
    """The caption and alt text of the landing page's figure (:func:`ranking` without absolute top-1), from
    the same records: what is drawn, over how many paired seeds, and how many intervals exclude zero."""
    records = study_records() if records is None else records
    groups = [(title, results.paired_differences(group, baseline=(baseline, "default")))
              for title, group in results.comparison_groups(_completed(records))
              if ((group["method"] == baseline) & (group["variant"] == "default")).any()]
    if not groups:
        return {"caption": "", "alt": ""}
    title, diffs = groups[0]
    clear = diffs[(diffs["lo"] > 0) | (diffs["hi"] < 0)]
    seeds = stats.seed_range(diffs["n"])
    caption = (f"Version 1, the papers' weights ({title}): each configuration's test top-1 at the last epoch "
               f"minus {baseline.upper()}'s on the same seeds, mean over {seeds} paired seeds with its 95% "
               f"Student-t interval, uncorrected for the {len(diffs)} comparisons. {len(clear)} of the "
               f"{len(diffs)} intervals exclude zero; the later versions tune the weights, use more seeds "
               "and correct for the number of comparisons.")
    rows = "; ".join(f"{options_label(r.method, r.variant)} {r.mean:+.2f} [{r.lo:+.2f}, {r.hi:+.2f}]"
                     for r in diffs.sort_values("mean", ascending=False).itertuples())
    return {"caption": caption, "alt": f"Interval plot of top-1 differences from {baseline.upper()}: {rows}."}


def options_label(method: str, variant: str) -> str:
    """``iekd (exp_weight 50, inh_weight 50)``: a configuration as readers name it."""
    return method if variant == "default" else f"{method} ({options_in_words(variant)})"


#: The figures of the book's ``kdlib-figure`` directive, by name (each returns a list of figures).
FIGURES: dict[str, Callable[..., list[Figure]]] = {
    "ranking": ranking,
    "difference": lambda: ranking(absolute=False),  # the landing page's one figure
}
#: The captions and alt texts of the figures that have them, by name.
FIGURE_TEXT: dict[str, Callable[..., dict[str, str]]] = {"difference": difference_text}


def split_constant(table: pd.DataFrame, keep: tuple[str, ...] = ("method", "variant", "run")) -> tuple[
        dict[str, str], pd.DataFrame]:
    """The columns whose every row holds the same value (said once above the table, not in every row), and
    the table without them. Tables of one row, and the ``keep`` columns, are left whole."""
    if len(table) < 2:
        return {}, table
    constant = {str(c): str(table[c].iloc[0]) for c in table.columns
                if c not in keep and table[c].astype(str).nunique() == 1}
    return constant, table.drop(columns=list(constant))


def caption(constant: dict[str, str]) -> str:
    """The sentence above a table that says what all its rows share, e.g. ``Every row: pair resnet32 →
    resnet8; scale fashion_mnist, 10000 train images, 5 epochs (repdistiller).`` (empty values left out)."""
    parts = [f"{name} {value}" for name, value in constant.items() if value.strip()]
    return f"Every row: {'; '.join(parts)}." if parts else ""


def to_markdown(table: pd.DataFrame) -> str:
    """A Markdown pipe table (cells escaped) of a display table."""
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(map(cell, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])
