"""What a staged study measured of each method, for its chapter (``book/methods/*.md``): the method's tuning
row, its final differences from each baseline, and its verdict in words, read from the study's records
(:mod:`kdlib.staged_report`) when the book is built, so a chapter's verdict cannot go stale. Every function
takes the study's profile (``proxy_v2``, ``proxy_v3``), or ``newest``: the newest study whose final runs are
all recorded (:func:`kdlib.staged_report.resolve`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from kdlib import comparison, report, staged_report, stats
from kdlib.methods import make_config
from kdlib.staged_report import display_name, short
from kdlib.study import staged

#: A tuning row's choice while the rule still waits for runs.
WAITING = "none yet: tuning is still running"
#: A Holm verdict (:func:`kdlib.comparison.holm_comparisons`) in the words a chapter uses, by baseline.
VERDICT_WORDS = {"above": "above {b}", "below": "below {b}",
                 "within the corrected noise": "within the noise of {b}"}


def _names(method: str) -> str:
    """The main weight's name, ``intra_weight = inter_weight`` where a method has two equal ones."""
    default = make_config(method)
    names = comparison.MAIN_WEIGHTS[method]
    equal = len({getattr(default, name) for name in names}) == 1
    return " = ".join(names) if equal else ", ".join(names)


def _weights(method: str, multiplier: float) -> str:
    """``cd_weight 24``: a method's main weight at ``multiplier`` times its default."""
    default = make_config(method)
    values = [getattr(default, name) * multiplier for name in comparison.MAIN_WEIGHTS[method]]
    if len(set(values)) == 1:
        return f"{_names(method)} {values[0]:g}"
    return ", ".join(f"{name} {value:g}" for name, value in zip(comparison.MAIN_WEIGHTS[method], values,
                                                                 strict=True))


def _grid(method: str, tried: Sequence[float]) -> str:
    """``cd_weight 1.5, 6, 24``: the weights a tuning tried (each weight's values where there are two)."""
    if len(comparison.MAIN_WEIGHTS[method]) == 1 or " = " in _names(method):
        return f"{_names(method)} " + ", ".join(_weights(method, m).rsplit(" ", 1)[1] for m in tried)
    return "; ".join(_weights(method, m) for m in tried)


def _end(multiplier: float, tried: Sequence[float]) -> str:
    if multiplier == tried[-1]:
        return "yes: the largest tried"
    if multiplier == tried[0]:
        return "yes: the smallest tried"
    return "no"


def _chosen(profile: str) -> pd.DataFrame:
    """Each tuned method's choice (:class:`kdlib.staged_report.StudyPlan`'s ``chosen``), indexed by method."""
    return staged_report.study_plan(profile).chosen.set_index("method", drop=False)


def tuning_rows(profile: str, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Each tuned method's row of the study's tuning: the weights tried, the mean validation top-1 (last
    epoch, over the tuning seeds) at each, the weight chosen and whether it is at an end of the weights tried
    (which, where the tuning brackets, only its limit can be). A method whose tuning still waits for runs (the
    rule has extended its grid, or a weight lacks a seed) has no choice yet: its row says so, and lists the
    weights with a score so far. ``methods``: only these methods' rows."""
    profile = staged_report.resolve(profile)
    if not len(staged_report.stage_records(profile, "tuning")):
        return pd.DataFrame()
    rows = []
    for row in _chosen(profile).itertuples():
        if methods is not None and row.method not in methods:
            continue
        rows.append({
            "method": display_name(row.method),
            "weights tried": _grid(row.method, row.tried),
            "validation top-1 at each (%)": ", ".join(report.number(row.scores.get(m)) or "diverged"
                                                      for m in row.tried),
            "chosen": WAITING if row.waiting else (f"{_weights(row.method, row.multiplier)} "
                                                   f"({staged_report.multiple(row.multiplier)})"),
            "at an end of the weights tried": "–" if row.waiting else _end(row.multiplier, row.tried),
        })
    return pd.DataFrame(rows)


def final_rows(profile: str, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Each method's configuration in the study's final stage minus each baseline (test top-1 points, last
    epoch, paired seeds): the mean with its 95% interval, Holm's p over each baseline's family, and the
    verdict; empty until every final run is recorded. ``methods``: only these methods' rows."""
    profile = staged_report.resolve(profile)
    if not staged_report.complete(profile):
        return pd.DataFrame()
    order = {n: k for k, n in enumerate(dict.fromkeys(staged_report.names(profile).values()))}
    data = staged_report.own_rows(profile)
    if methods is not None:
        data = data[data["method"].isin(methods)]
    if data.empty:
        return pd.DataFrame()
    data = data.sort_values("method", key=lambda m: m.map(order), kind="stable").reset_index(drop=True)
    return pd.DataFrame({
        "configuration": data["label"],
        "minus": data["baseline"].map(short),
        "paired seeds": data["n"].astype(int),
        "difference [95% CI] (points)": [f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]" for m, lo, hi in
                                         zip(data["mean"], data["lo"], data["hi"], strict=True)],
        "Holm p": [stats.format_p(p) for p in data["p_holm"]],
        "verdict": [_verdict(v, b) for v, b in zip(data["verdict"], data["baseline"], strict=True)],
    })


def _verdict(verdict: str, baseline: str) -> str:
    return VERDICT_WORDS[verdict].format(b=short(baseline))


def _against(baseline: str, chosen: pd.DataFrame) -> str:
    """A baseline as a verdict names it: ``KD at its own tuned kd_weight 3.6``, ``ce, the student alone``."""
    if baseline == "ce":
        return "ce, the student alone"
    if baseline not in chosen.index:
        return short(baseline)
    return f"{short(baseline)} at its own tuned {_weights(baseline, chosen.loc[baseline, 'multiplier'])}"


def verdict(method: str, profile: str = staged_report.NEWEST) -> str:
    """A method's result in the study, in words (Markdown): the weight tuning chose, then its difference
    from each baseline at that weight with the 95% interval, Holm's p and the verdict; until every final run
    is recorded, that the answer waits for them."""
    name = display_name(method)
    study = staged_report.resolve(profile)
    v = staged_report.version(study)
    if not staged_report.complete(study):
        baselines = [short(b) for b in staged.load_staged(study).final["baselines"]]
        return (f"Version {v} compares {name} with {staged_report.in_words(baselines)} once "
                "every one of its final runs is recorded, never from some of them.")
    own = staged_report.own_rows(study)
    mine = own[own["method"] == method]
    if not len(mine):
        return f"{name} is not in version {v}'s final comparison."
    chosen = _chosen(study)
    row = chosen.loc[method]
    end = _end(row["multiplier"], row["tried"])
    text = (f"Version {v} tuned {name}'s weight on a validation split and chose "
            f"{_weights(method, row['multiplier'])}, {staged_report.multiple(row['multiplier'])} its default"
            + (f" and {end[5:]}, so a weight beyond it may do better, or worse." if end != "no" else
               ", between the weights tried."))
    parts = []
    for r in mine.itertuples():
        unit = "" if parts else " points of test top-1"
        parts.append(f"{r.mean:+.2f} [{r.lo:+.2f}, {r.hi:+.2f}]{unit} against {_against(r.baseline, chosen)} "
                     f"({stats.p_phrase(r.p_holm)}): **{_verdict(r.verdict, r.baseline)}**")
    seeds = stats.seed_range(mine["n"])
    return (f"{text} At that weight, over {seeds} paired seeds, {mine['label'].iloc[0]} "
            "scores " + "; and ".join(parts) + ".")


#: The chapters' tables for the book's ``kdlib-table`` directive, by name (options ``study`` and
#: ``methods``).
TABLES: dict[str, Callable[..., pd.DataFrame]] = {
    "method-tuning": tuning_rows,
    "method-final": final_rows,
}
