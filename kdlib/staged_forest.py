"""A staged study's final comparison drawn: one forest-plot panel per family of its protocol (minus KD, minus
DKD, minus ``ce``), with a caption and alt text written from the same numbers."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
from matplotlib.figure import Figure

from kdlib import plots, stats
from kdlib.staged_report import (
    complete,
    family_rows,
    in_words,
    resolve,
    shown,
    version,
)
from kdlib.study import staged


def forest_data(profile: str) -> pd.DataFrame:
    """Every family's configurations minus its baseline (:func:`kdlib.staged_report.family_rows`): ``label``,
    ``baseline``, ``n``, ``mean``, ``lo``, ``hi`` (95% interval), ``p_holm`` and ``significant`` (Holm's p at
    most the protocol's alpha); empty until every final run is recorded. ``profile`` may be
    :data:`kdlib.staged_report.NEWEST`."""
    profile = resolve(profile)
    if not complete(profile):
        return pd.DataFrame()
    data = family_rows(profile)
    return data.assign(significant=data["p_holm"] <= staged.load_staged(profile).final["alpha"])


def forest(profile: str) -> list[Figure]:
    """:func:`forest_data` drawn (:func:`kdlib.plots.forest`): one panel per family."""
    data = forest_data(profile)
    if data.empty:
        return []
    return [plots.forest(data.assign(baseline=data["baseline"].map(shown)),
                         xlabel="test top-1 difference (points, last epoch)")]


#: Where each panel of a forest plot stands, by the number of panels.
PANELS = {2: ("left", "right"), 3: ("left", "middle", "right")}


def forest_text(profile: str) -> dict[str, str]:
    """The caption and the alt text of :func:`forest`, from the same numbers."""
    profile = resolve(profile)
    data = forest_data(profile)
    if data.empty:
        return {"caption": "", "alt": ""}
    baselines = list(dict.fromkeys(data["baseline"]))
    minus = [f"minus {'ce, the student trained alone' if b == 'ce' else shown(b)}" for b in baselines]
    if len(baselines) in PANELS:
        minus = [f"{m} ({side})" for m, side in zip(minus, PANELS[len(baselines)], strict=True)]
    panels = in_words(minus)
    kd = data[data["baseline"] == baselines[0]]
    above = kd[kd["significant"] & (kd["mean"] > 0)]["label"].tolist()
    name = shown(baselines[0])
    takeaway = (f"only {in_words(above)} beat{'s' * (len(above) == 1)} {name} beyond the corrected noise"
                if above else
                f"no configuration beats {name} beyond the corrected noise")
    sizes = "/".join(str(n) for n in dict.fromkeys(int((data["baseline"] == b).sum()) for b in baselines))
    seeds = stats.seed_range(data["n"])
    pair = staged.load_staged(profile).pair
    caption = (f"Version {version(profile)}'s final comparison on {pair.teacher} → {pair.student}: each "
               f"configuration at its tuned weight "
               f"{panels}, on the Fashion-MNIST test set; mean over {seeds} paired seeds with "
               f"its 95% Student-t interval (uncorrected); a filled marker is significant after Holm's "
               f"correction over each panel's {sizes} comparison{'' if sizes == '1' else 's'} (α = "
               f"{staged.load_staged(profile).final['alpha']:g}). At this scale, {takeaway}.")
    rows = "; ".join(f"{r.label} {r.mean:+.2f} [{r.lo:+.2f}, {r.hi:+.2f}]" for r in kd.itertuples())
    alt = (f"Forest plot of test top-1 differences with 95% intervals, {len(baselines)} panels. "
           f"Minus {name}: {rows}. {takeaway[0].upper()}{takeaway[1:]}.")
    return {"caption": caption, "alt": alt}


#: A staged study's figures for the book's ``kdlib-figure`` directive (with ``:study:``), and their caption
#: and alt text.
FIGURES: dict[str, Callable[[str], list[Figure]]] = {"study-forest": forest}
FIGURE_TEXT: dict[str, Callable[[str], dict[str, str]]] = {"study-forest": forest_text}
