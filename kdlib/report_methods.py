"""What version 2 measured of each method, for its chapter (``book/methods/*.md``): the method's tuning row,
its final differences from KD and from ``ce``, and its verdict in words, all read from the second proxy
study's records (:mod:`kdlib.report_v2`) when the book is built, so a chapter's verdict cannot go stale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from kdlib import comparison, report, stats
from kdlib.methods import make_config
from kdlib.report_v2 import configuration_label, display_name, forest_data, grid_ends, stage_records

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


def tuning_rows(methods: Sequence[str] | None = None, tuning: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each tuned method's row of version 2's tuning: the weights tried, the mean validation top-1 (last
    epoch, over the tuning seeds) at each, the weight chosen and whether it is at an end of the grid.
    ``methods``: only these methods' rows."""
    tuning = stage_records("tuning") if tuning is None else tuning
    if not len(tuning):
        return pd.DataFrame()
    rows = []
    for row in grid_ends(tuning).itertuples():
        if methods is not None and row.method not in methods:
            continue
        rows.append({
            "method": display_name(row.method),
            "weights tried": _grid(row.method, row.tried),
            "validation top-1 at each (%)": ", ".join(report.number(row.scores.get(m))
                                                      or "diverged" for m in row.tried),
            "chosen": f"{_weights(row.method, row.multiplier)} (×{row.multiplier:g})",
            "at an end of the grid": _end(row.multiplier, row.tried),
        })
    return pd.DataFrame(rows)


def final_rows(methods: Sequence[str] | None = None, final: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each configuration of version 2's final stage minus KD and minus ``ce`` (test top-1 points, last
    epoch, paired seeds): the mean with its 95% interval, Holm's p over each baseline's family, and the
    verdict; empty until every final run is recorded. ``methods``: only these methods' rows."""
    data = forest_data(final)
    if data.empty:
        return pd.DataFrame()
    if methods is not None:
        data = data[data["method"].isin(methods)]
    return pd.DataFrame({
        "configuration": data["label"],
        "minus": [display_name(b).split(" (")[0] for b in data["baseline"]],
        "paired seeds": data["n"].astype(int),
        "difference [95% CI] (points)": [f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]" for m, lo, hi in
                                         zip(data["mean"], data["lo"], data["hi"], strict=True)],
        "Holm p": [stats.format_p(p) for p in data["p_holm"]],
        "verdict": [_verdict(v, b) for v, b in zip(data["verdict"], data["baseline"], strict=True)],
    }).reset_index(drop=True)


def _verdict(verdict: str, baseline: str) -> str:
    return VERDICT_WORDS[verdict].format(b=display_name(baseline).split(" (")[0])


def verdict(method: str, final: pd.DataFrame | None = None, tuning: pd.DataFrame | None = None) -> str:
    """A method's result in version 2, in words (Markdown): the weight tuning chose, then its difference
    from KD and from ``ce`` at that weight with the 95% interval, Holm's p and the verdict; until every
    final run is recorded, that the answer waits for them."""
    data = forest_data(final)
    name = display_name(method)
    if data.empty:
        return (f"Version 2 compares {name} with KD and with the student alone once every one of its final "
                "runs is recorded, never from some of them.")
    ends = grid_ends(tuning).set_index("method")
    mine = data[data["method"] == method]
    if not len(mine):
        return f"{name} is not in version 2's final comparison."
    row = ends.loc[method]
    end = _end(row["multiplier"], row["tried"])
    chosen = (f"Version 2 tuned {name}'s weight on a validation split and chose "
              f"{_weights(method, row['multiplier'])}, ×{row['multiplier']:g} its default"
              + (f" and {end[5:]}, so a weight beyond the grid may do better, or worse." if end != "no" else
                 ", between the weights tried."))
    kd = f"KD at its own tuned {_weights('kd', ends.loc['kd', 'multiplier'])}" if "kd" in ends.index else "KD"
    against = {"kd": kd, "ce": "ce, the student alone"}
    parts = []
    for r in mine.itertuples():
        unit = "" if parts else " points of test top-1"
        parts.append(f"{r.mean:+.2f} [{r.lo:+.2f}, {r.hi:+.2f}]{unit} against "
                     f"{against.get(r.baseline, r.baseline)} ({stats.p_phrase(r.p_holm)}):"
                     f" **{_verdict(r.verdict, r.baseline)}**")
    label = configuration_label(method, mine["variant"].iloc[0])
    return (f"{chosen} At that weight, over {int(mine['n'].min())} paired seeds, {label} scores "
            + "; and ".join(parts) + ".")


#: The chapters' tables for the book's ``kdlib-table`` directive, by name (option ``methods``).
TABLES: dict[str, Callable[..., pd.DataFrame]] = {
    "v2-method-tuning": tuning_rows,
    "v2-method-final": final_rows,
}
