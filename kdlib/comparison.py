"""The proxy study's second protocol in code: weights chosen on validation, Holm-corrected paired comparisons
on the test set, the answer in words, and the power the first study's noise allows.

- :data:`MAIN_WEIGHTS`: each tuned method's main weight (the option fields scaled together) at its default.
- :func:`candidates`: a method's tuning candidates, its main weight times each multiplier.
- :func:`select_weights`: each method's weight chosen by mean validation top-1 over the tuning seeds (never
  the test set); diverged and missing runs and ties handled as the docstring says.
- :func:`holm_comparisons`: every configuration minus a baseline (``kd``, ``ce``) on the same seeds, a paired
  t-test each, Holm's correction over the family of comparisons with that baseline.
- :func:`answer`: which methods beat KD (and ce) beyond the corrected noise, in words, from the records.
- :func:`power_statement`: the smallest difference detectable with 80% power, from committed records' SDs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from kdlib import results, stats
from kdlib.methods import make_config, variant_string

#: The main weight of each tuned method, as the option fields scaled together (defaults in
#: :mod:`kdlib.methods`; CCS's two terms and IE-KD's two terms move as one knob; DKD's is β, the weight of its
#: non-target term, the one mdistiller sets per pair).
MAIN_WEIGHTS: dict[str, tuple[str, ...]] = {
    "kd": ("kd_weight",),
    "dkd": ("nckd_weight",),
    "ickd": ("ickd_weight",),
    "ccs": ("intra_weight", "inter_weight"),
    "cd": ("cd_weight",),
    "cwt": ("cwt_weight",),
    "iekd": ("inh_weight", "exp_weight"),
    "pkt": ("pkt_weight",),
}
#: The tuning multipliers of the main weight (a quarter, the default, four times).
MULTIPLIERS = (0.25, 1.0, 4.0)


def candidates(method: str, multipliers: Sequence[float] = MULTIPLIERS,
               fixed: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One entry per multiplier: ``multiplier``, ``overrides`` (the method options: the main weight scaled,
    plus the ``fixed`` options every run of the method takes) and ``variant`` (the label its records carry:
    ``default`` at ×1 without ``fixed``)."""
    default = make_config(method)
    out = []
    for multiplier in multipliers:
        overrides = {name: getattr(default, name) * multiplier for name in MAIN_WEIGHTS[method]}
        if multiplier == 1:
            overrides = {}
        overrides = {**overrides, **(fixed or {})}
        out.append({"method": method, "multiplier": multiplier, "overrides": overrides,
                    "variant": variant_string(make_config(method, overrides))})
    return out


def _score(runs: pd.DataFrame, seeds: Sequence[int]) -> tuple[float, str]:
    """(mean validation top-1 over ``seeds``, why not) of one candidate's runs; NaN: it cannot be chosen."""
    by_seed = {int(s): r for s, r in zip(runs["seed"], runs.itertuples(), strict=True)}
    missing = [s for s in seeds if s not in by_seed]
    if missing:
        return math.nan, f"no run for seed {', '.join(map(str, missing))}"
    diverged = [s for s in seeds if by_seed[s].status == results.STATUS_DIVERGED]
    if diverged:
        return math.nan, f"diverged on seed {', '.join(map(str, diverged))}"
    values = [by_seed[s].val_top1_last for s in seeds]
    if any(v is None or not np.isfinite(v) for v in values):
        return math.nan, "no validation top-1 recorded"
    return float(np.mean(values)), ""


def select_weights(records: pd.DataFrame, methods: Sequence[str], seeds: Sequence[int],
                   multipliers: Sequence[float] | Mapping[str, Sequence[float]] = MULTIPLIERS,
                   fixed: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Each method's main weight chosen on the validation set: the candidate (:func:`candidates`) with the
    highest mean ``val_top1_last`` over the tuning ``seeds``.

    ``records``: a :func:`~kdlib.results.load_records` frame of completed and diverged runs. ``multipliers``:
    the same for every method, or each method's own (a bracketing tuning extends them per method);
    ``fixed``: options every run of a method takes, by method (:func:`candidates`). A candidate
    that diverged on any tuning seed, or lacks a run or a validation number, cannot be chosen (its ``note``
    says why). Ties (equal means) go to the multiplier nearest the default (×1), then to the smaller weight.
    A method none of whose candidates can be chosen gets ``chosen`` None. The test-set columns are never
    read. One row per method: ``method``, ``chosen`` (variant label), ``multiplier``, ``overrides``,
    ``val_top1`` (the chosen mean), ``scores`` (multiplier → mean or None) and ``note``."""
    rows = []
    for method in methods:
        scored = []
        notes = []
        mine = multipliers[method] if isinstance(multipliers, Mapping) else multipliers
        for c in candidates(method, mine, (fixed or {}).get(method)):
            runs = records[(records["method"] == method) & (records["variant"] == c["variant"])]
            score, why = _score(runs, seeds)
            scored.append((c, score))
            if why:
                notes.append(f"×{c['multiplier']:g}: {why}")
        eligible = [(c, s) for c, s in scored if not math.isnan(s)]
        best = max(eligible, key=lambda cs: (cs[1], -abs(math.log(cs[0]["multiplier"])),
                                             -cs[0]["multiplier"]), default=None)
        rows.append({"method": method, "chosen": best[0]["variant"] if best else None,
                     "multiplier": best[0]["multiplier"] if best else None,
                     "overrides": best[0]["overrides"] if best else None,
                     "val_top1": best[1] if best else math.nan,
                     "scores": {c["multiplier"]: (None if math.isnan(s) else s) for c, s in scored},
                     "note": "; ".join(notes)})
    return pd.DataFrame(rows)


#: Where a bracketing tuning of one method stands (:func:`bracket`).
WAITING, INTERIOR, AT_LIMIT, ALL_DIVERGED = "waiting for runs", "interior", "at the limit", "all diverged"


def bracket(records: pd.DataFrame, method: str, seeds: Sequence[int], multipliers: Sequence[float],
            factor: float | None = None, limit: float | None = None,
            fixed: Mapping[str, Any] | None = None) -> tuple[list[float], str]:
    """The multipliers a bracketing tuning of ``method`` has reached, and where it stands.

    The rule: start from ``multipliers``; once every candidate has a record on every tuning seed, choose
    (:func:`select_weights`); while the chosen multiplier is the largest tried, add it times ``factor``, and
    while it is the smallest, add it divided by ``factor``, unless that passes ``limit`` (or ``1 / limit``).
    Without ``factor`` the grid is fixed, and its ends are its limits. Returns the multipliers in increasing
    order, and where the tuning stands: :data:`WAITING` while a candidate lacks a record, :data:`INTERIOR`
    once the chosen one has a tried neighbour on each side, :data:`AT_LIMIT` when it is an end at the
    limit, :data:`ALL_DIVERGED` when none can be chosen."""
    tried = sorted(multipliers)
    while True:
        row = select_weights(records, [method], seeds, {method: tried}, {method: fixed or {}}).iloc[0]
        if "no run for" in row.note:
            return tried, WAITING
        if row.multiplier is None or pd.isna(row.multiplier):
            return tried, ALL_DIVERGED
        if row.multiplier not in (tried[0], tried[-1]):
            return tried, INTERIOR
        if factor is None or limit is None:
            return tried, AT_LIMIT
        step = row.multiplier * factor if row.multiplier == tried[-1] else row.multiplier / factor
        if not 1 / limit <= step <= limit:
            return tried, AT_LIMIT
        tried = sorted([*tried, step])


def baseline_variant(records: pd.DataFrame, method: str) -> str:
    """The variant of ``method`` that others are compared with: its only one in ``records`` (a final stage
    runs each method at its chosen weight), else ``default``."""
    variants = set(records.loc[records["method"] == method, "variant"]) if len(records) else set()
    return variants.pop() if len(variants) == 1 else "default"


def holm_comparisons(records: pd.DataFrame, baseline: str = "kd", alpha: float = 0.05,
                     metric: str = "top1_last") -> pd.DataFrame:
    """Every configuration minus ``baseline`` (its :func:`baseline_variant`) on the same seeds: ``n``,
    ``mean``, the 95% interval (``lo``, ``hi``, uncorrected), the paired t-test's ``p`` and Holm's
    ``p_holm`` over the family of all comparisons with ``baseline`` in the frame, and the ``verdict``:
    ``above``/``below`` when
    ``p_holm <= alpha``, else ``within the corrected noise``. Diverged runs are left out (they have no
    accuracy); a configuration every run of which diverged has no row."""
    variant = baseline_variant(records, baseline)
    diffs = results.paired_differences(records, baseline=(baseline, variant), metric=metric)
    if diffs.empty:
        return diffs
    completed = records[records["status"] != results.STATUS_DIVERGED]
    base = completed[(completed["method"] == baseline) & (completed["variant"] == variant)]
    base = dict(zip(base["seed"], base[metric], strict=True))
    p = []
    for row in diffs.itertuples():
        mine = completed[(completed["method"] == row.method) & (completed["variant"] == row.variant)]
        d = [v - base[s] for s, v in zip(mine["seed"], mine[metric], strict=True) if s in base]
        p.append(stats.paired_test(d)[1])
    diffs = diffs.assign(p=p, p_holm=stats.holm(p))
    diffs["verdict"] = [
        ("above" if m > 0 else "below") if ph <= alpha else "within the corrected noise"
        for m, ph in zip(diffs["mean"], diffs["p_holm"].fillna(1.0), strict=True)]
    return diffs.sort_values("mean", ascending=False).reset_index(drop=True)


def _slash(method: str, variant: str) -> str:
    return f"{method}/{variant}"


def _difference(row: Any, intervals: bool) -> str:
    """``+3.77`` (``+3.77 [+3.20, +4.35]`` with ``intervals``): a mean difference in points."""
    return f"{row.mean:+.2f}" + (f" [{row.lo:+.2f}, {row.hi:+.2f}]" if intervals else "")


def _named(rows: pd.DataFrame, label: Callable[[str, str], str] = _slash, intervals: bool = False) -> str:
    if intervals:  # "CD (cd_weight 24) +3.77 [+3.20, +4.35] (Holm p < 0.001)"
        return "; ".join(f"{label(r.method, r.variant)} {_difference(r, True)} ({stats.p_phrase(r.p_holm)})"
                         for r in rows.itertuples())
    return ", ".join(f"{label(r.method, r.variant)} ({_difference(r, False)}, {stats.p_phrase(r.p_holm)})"
                     for r in rows.itertuples())


def _sentence(table: pd.DataFrame, baseline: str, alpha: float, label: Callable[[str, str], str] = _slash,
              intervals: bool = False) -> str:
    above, below = table[table["verdict"] == "above"], table[table["verdict"] == "below"]
    noise = table[table["verdict"] == "within the corrected noise"]
    name = baseline if baseline == "ce" else baseline.upper()
    seeds = stats.seed_range(table["n"])
    lead = (f"**{len(above)} of {len(table)} configurations beat{'s' * (len(above) == 1)} {name} beyond the "
            "Holm-corrected noise**"
            f" ({seeds} paired seeds, family-wise level {alpha:g}): {_named(above, label, intervals)}."
            if len(above) else
            f"**No configuration beats {name} beyond the Holm-corrected noise** ({seeds} paired seeds, "
            f"{len(table)} comparison{'s' * (len(table) != 1)}, family-wise level {alpha:g}).")
    parts = [lead]
    if len(below):
        parts.append(f"{len(below)} fall below {name}: {_named(below, label, intervals)}.")
    if len(noise):
        parts.append(f"{len(noise)} cannot be told apart from {name}: "
                     + ("; " if intervals else ", ").join(
                         f"{label(r.method, r.variant)} " + (_difference(r, True) if intervals else
                                                              f"({_difference(r, False)})")
                         for r in noise.itertuples()) + ".")
    return " ".join(parts)


def answer(records: pd.DataFrame, baselines: Sequence[str] = ("kd", "ce"), alpha: float = 0.05,
           detectable: float | None = None, label: Callable[[str, str], str] = _slash,
           intervals: bool = False, tables: Mapping[str, pd.DataFrame] | None = None,
           more: Sequence[str] = ()) -> str:
    """The answer in words (Markdown), generated from ``records`` (one comparable group): per baseline, the
    configurations above and below it after Holm's correction and those that cannot be told apart, with
    mean top-1 differences (points, last epoch), then what the study cannot say. ``detectable``: the
    smallest difference the design detects with 80% power (:func:`power_statement`), said once. ``label``:
    how a configuration is named from its method and variant (default ``method/variant``); ``intervals``:
    each difference with its 95% interval (uncorrected); ``tables``: each baseline's comparisons where they
    are already made (a staged study's families, :func:`kdlib.staged_report.family_table`), else
    :func:`holm_comparisons` of ``records``; ``more``: paragraphs said before what the study cannot say (its
    ablations)."""
    paragraphs = []
    for baseline in baselines:
        table = holm_comparisons(records, baseline, alpha) if tables is None else tables[baseline]
        if table.empty:
            paragraphs.append(f"No run of {baseline} to pair with: no comparison with {baseline} yet.")
            continue
        paragraphs.append(_sentence(table, baseline, alpha, label, intervals))
    diverged = records[records["status"] == results.STATUS_DIVERGED]
    if len(diverged):
        names = sorted({label(m, v) for m, v in zip(diverged["method"], diverged["variant"], strict=True)})
        paragraphs.append(f"Diverged runs (no accuracy, left out of the comparisons): {', '.join(names)}.")
    paragraphs += [text for text in more if text]
    cannot = ("What this cannot say: a difference smaller than the design detects is not evidence of no "
              "difference")
    cannot += f" (about {detectable:.2f} points here, with 80% power)" if detectable else ""
    cannot += ("; and nothing here transfers to CIFAR-100 or ImageNet, nor to other weights, pairs or "
               "schedules.")
    paragraphs.append(cannot)
    return "\n\n".join(paragraphs)


def pooled_paired_sd(records: pd.DataFrame, baseline: str = "kd",
                     metric: str = "top1_last") -> tuple[float, int]:
    """(pooled SD of the per-seed differences to ``baseline``, its degrees of freedom): the square root of
    the configurations' paired-difference variances averaged with weights ``n − 1``."""
    diffs = results.paired_differences(records, baseline=(baseline, baseline_variant(records, baseline)),
                                       metric=metric)
    diffs = diffs[diffs["n"] > 1]
    df = int((diffs["n"] - 1).sum())
    if not df:
        raise ValueError(f"no configuration has two paired seeds with {baseline}")
    return float(math.sqrt(((diffs["n"] - 1) * diffs["std"] ** 2).sum() / df)), df


def power_statement(records: pd.DataFrame, seeds: int, comparisons: int, alpha: float = 0.05,
                    target: float = 0.8, baseline: str = "kd") -> dict[str, Any]:
    """The power of the planned design from committed records' noise: the pooled paired SD of
    ``records`` (:func:`pooled_paired_sd`), and the smallest true mean difference that a paired t-test over
    ``seeds`` seeds detects with probability ``target`` at ``alpha / comparisons`` (Bonferroni, the level
    Holm's first step applies; later steps are less strict, so this is conservative), and at ``alpha``."""
    sd, df = pooled_paired_sd(records, baseline)
    return {"sd": sd, "df": df, "seeds": seeds, "comparisons": comparisons, "alpha": alpha, "power": target,
            "detectable": stats.detectable_difference(sd, seeds, alpha / comparisons, target),
            "detectable_uncorrected": stats.detectable_difference(sd, seeds, alpha, target)}


def power_table(records: pd.DataFrame, design: Sequence[tuple[str, int, int]], alpha: float = 0.05,
                inflation: float = 1.5, delta: float = 1.0, baseline: str = "kd") -> pd.DataFrame:
    """A planned design's power from committed records' noise (:func:`pooled_paired_sd`), one row per
    ``(family, comparisons, paired seeds)`` of ``design``: the smallest true difference detected with 80%
    power at Holm's first step (``alpha / comparisons``), at the records' SD and at ``inflation`` times it
    (noise a design adds, such as other teachers and training images), and the power to detect ``delta``
    at each."""
    sd, df = pooled_paired_sd(records, baseline)
    rows = []
    for family, comparisons, seeds in design:
        level = alpha / comparisons
        detectable = stats.detectable_difference(sd, seeds, level)
        rows.append({"family": family, "comparisons": comparisons, "paired seeds": seeds,
                     f"detectable, SD {sd:.2f} ({df} df)": f"{detectable:.2f}",
                     f"detectable, SD {inflation * sd:.2f}":
                         f"{stats.detectable_difference(inflation * sd, seeds, level):.2f}",
                     f"power for {delta:g} point, SD {sd:.2f}": f"{stats.power(delta, sd, seeds, level):.0%}",
                     f"power for {delta:g} point, SD {inflation * sd:.2f}":
                         f"{stats.power(delta, inflation * sd, seeds, level):.0%}"})
    return pd.DataFrame(rows)
