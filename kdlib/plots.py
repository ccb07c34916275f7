"""Figures of the notebooks (seaborn / matplotlib): training curves, the methods' own quantities, rankings.

Every function here draws: it takes run records, summary tables or a method's figure data and returns a
``matplotlib.figure.Figure``. What a method's figure shows is computed by the method's distiller, with the
parts its loss uses (``ICKD.correlation_data``, ``CCS.correlation_data``, ``CD.attention_data``,
``CWT.transform_data``, ``IEKD.similarity_data`` in ``kdlib.losses``), so a figure shows exactly what the
loss compares. Nothing here trains, reads files or computes a method's quantities.

Every plotting function leaves the backend alone (notebooks show figures inline) and returns the figure, so
a notebook cell ending in the call displays it once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from kdlib.methods import options_in_words

#: Colour maps, sequential for non-negative matrices and diverging for correlations in [-1, 1].
SEQUENTIAL = "rocket_r"
DIVERGING = "vlag"


def setup(dpi: int = 72) -> None:
    """The study's look: seaborn's whitegrid theme, small figures (keeps notebooks light)."""
    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")
    plt.rcParams.update({"figure.dpi": dpi, "savefig.dpi": dpi, "figure.max_open_warning": 0,
                         "axes.titlesize": "medium"})


def _close(fig: Figure) -> Figure:
    """Detach ``fig`` from pyplot's state so it is displayed once (as the cell's value), not twice."""
    plt.close(fig)
    return fig


# --- training curves ------------------------------------------------------------------------------
def history_frame(records: Sequence[Mapping[str, Any]], label: str | None = None) -> pd.DataFrame:
    """Long table of the records' per-epoch history: run label (``method/variant``, or the record field
    ``label`` names, e.g. ``student``), seed, epoch, top1, top5, loss, lr and each named loss term
    (``loss:<name>``)."""
    rows = []
    for record in records:
        name = f"{record['method']}/{record['variant']}" if label is None else str(record[label])
        for entry in record.get("history", []):
            row = {"run": name, "seed": record.get("seed"), "epoch": entry["epoch"],
                   "top1": entry.get("top1"), "top5": entry.get("top5"), "loss": entry.get("loss"),
                   "lr": entry.get("lr")}
            row.update({f"loss:{k}": v for k, v in (entry.get("losses") or {}).items()})
            rows.append(row)
    return pd.DataFrame(rows)


def _palette(order: Sequence[str]) -> dict[str, Any]:
    """One colour per run label, the same in every panel of a figure."""
    return dict(zip(order, sns.color_palette("colorblind", n_colors=max(len(order), 1)), strict=False))


def _legend(fig: Figure, palette: Mapping[str, Any], title: str | None = None) -> None:
    """One legend for the whole figure, right of the panels: true in every panel (colours are shared)."""
    handles = [Line2D([0], [0], color=c, marker="o", label=name) for name, c in palette.items()]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9, title=title,
               title_fontsize=9, frameon=False)


def training_curves(records: Sequence[Mapping[str, Any]], title: str | None = None,
                    label: str | None = None, legend_title: str | None = None) -> Figure:
    """Test top-1 and training loss per epoch, one line per run label (``method/variant``, or the record
    field ``label``; mean over seeds, band = 95% interval when several seeds); single epochs are points.
    The loss is each run's own objective (the sum of its weighted terms), so it compares epochs of one run,
    not methods. ``legend_title``: what the labels are (default ``label``, else ``run``); a teacher's own
    training record names its architecture in the field ``student``, so its curves say ``teacher``."""
    df = history_frame(records, label)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    if df.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
        return _close(fig)
    palette = _palette(list(dict.fromkeys(df["run"])))
    panels = (("top1", "test top-1 (%)"), ("loss", "training objective (own terms)"))
    for ax, (column, name) in zip(axes, panels, strict=True):
        sns.lineplot(data=df, x="epoch", y=column, hue="run", hue_order=list(palette), palette=palette,
                     marker="o", errorbar=("ci", 95), ax=ax, legend=False)
        ax.set_ylabel(name)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _legend(fig, palette, legend_title or label or "run")
    return _close(fig)


def family_curves(records: Sequence[Mapping[str, Any]], title: str | None = None, reference: str = "kd",
                  ncols: int = 4) -> Figure:
    """Small multiples: test top-1 per epoch, one panel per method with its variants (mean over seeds, 95%
    band), and the ``reference`` method's default run dashed in grey in every panel. Losses are left out: each
    method's objective has its own terms and scale."""
    df = history_frame(records)
    df["method"] = df["run"].str.split("/").str[0]
    methods = [m for m in dict.fromkeys(df["method"]) if m != reference] or [reference]
    nrows = -(-len(methods) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 2.4 * nrows), sharex=True, sharey=True,
                             squeeze=False)
    base = df[df["run"] == f"{reference}/default"]
    df["shown"] = [_in_words(run) for run in df["run"]]
    for ax, method in zip(axes.flat, methods, strict=False):
        part = df[df["method"] == method]
        variants = list(dict.fromkeys(part["shown"]))
        if len(base) and method != reference:
            sns.lineplot(data=base, x="epoch", y="top1", color="grey", ls="--", errorbar=None, ax=ax,
                         label=reference.upper())
        sns.lineplot(data=part, x="epoch", y="top1", hue="shown", hue_order=variants,
                     palette=_palette(variants), marker="o", errorbar=("ci", 95), ax=ax)
        ax.legend(fontsize="small", loc="lower right", title=None)
        ax.set_title(method)
        ax.set_ylabel("test top-1 (%)")
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _close(fig)


def _in_words(run: str) -> str:
    """``cd (edt paper)`` for the run label ``cd/edt=paper``, ``cd`` for ``cd/default``."""
    method, variant = run.split("/", 1)
    return method if variant == "default" else f"{method} ({options_in_words(variant)})"


def loss_terms(records: Sequence[Mapping[str, Any]], title: str | None = None) -> Figure:
    """Each named (weighted) loss term per epoch, one panel per term, one line per run label; a run keeps its
    colour in every panel and the figure has one legend."""
    df = history_frame(records)
    terms = [c for c in df.columns if c.startswith("loss:")]
    fig, axes = plt.subplots(1, max(1, len(terms)), figsize=(3.0 * max(1, len(terms)), 3.0), squeeze=False)
    palette = _palette(list(dict.fromkeys(df["run"])) if len(df) else [])
    for ax, term in zip(axes[0], terms, strict=False):
        part = df.dropna(subset=[term])
        sns.lineplot(data=part, x="epoch", y=term, hue="run", hue_order=[r for r in palette if r in
                     set(part["run"])], palette=palette, marker="o", ax=ax, legend=False)
        ax.set_title(term.split(":", 1)[1])
        ax.set_ylabel("weighted term")
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if terms:
        _legend(fig, palette, "run")
    return _close(fig)


# --- matrices -------------------------------------------------------------------------------------
def heatmaps(matrices: Mapping[str, np.ndarray], title: str | None = None, vmin: float | None = None,
             vmax: float | None = None, cmap: str = SEQUENTIAL, ncols: int | None = None,
             size: float = 3.4) -> Figure:
    """Square matrices side by side on one colour scale (``vmin``/``vmax``: the joint range by default)."""
    values = [np.asarray(m, dtype=float) for m in matrices.values()]
    vmin = min(float(np.nanmin(v)) for v in values) if vmin is None else vmin
    vmax = max(float(np.nanmax(v)) for v in values) if vmax is None else vmax
    n = len(values)
    ncols = ncols or n
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols + 0.8, size * nrows), squeeze=False)
    for ax, (name, matrix) in zip(axes.flat, zip(matrices, values, strict=True), strict=False):
        sns.heatmap(matrix, ax=ax, vmin=vmin, vmax=vmax, cmap=cmap, square=True, cbar=ax is axes.flat[n - 1],
                    xticklabels=False, yticklabels=False, rasterized=True)
        ax.set_title(name)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _close(fig)


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared difference of two matrices (NaN when shapes differ)."""
    return float(np.mean((a - b) ** 2)) if a.shape == b.shape else float("nan")


# --- ICKD -----------------------------------------------------------------------------------------
def ickd_correlations(data: Mapping[str, np.ndarray], title: str | None = None) -> Figure:
    """ICKD's figure: the three channel-correlation matrices of
    :meth:`ICKD.correlation_data <kdlib.losses.ickd.ICKD.correlation_data>`; titles give the mean squared
    difference to the teacher's."""
    teacher = data["teacher"]
    named = {(k if k == "teacher" else f"{k}\nMSE to teacher {_distance(v, teacher):.2e}"): v
             for k, v in data.items()}
    return heatmaps(named, title=title or "Inter-channel correlation Ĝ (batch mean, last pre-pool map)",
                    vmin=0.0)


# --- CCS ------------------------------------------------------------------------------------------
def ccs_matrices(data: Mapping[str, Mapping[str, np.ndarray]], title: str | None = None) -> Figure:
    """CCS's figure: intra-instance (top) and inter-instance (bottom) Pearson matrices, on [-1, 1], of
    :meth:`CCS.correlation_data <kdlib.losses.ccs.CCS.correlation_data>`."""
    flat = {}
    for kind, label in (("intra", "intra-instance"), ("inter", "inter-instance")):
        teacher = data[kind]["teacher"]
        for name, m in data[kind].items():
            extra = "" if name == "teacher" else f"\nMSE to teacher {_distance(m, teacher):.2e}"
            flat[f"{label}: {name}{extra}"] = m
    return heatmaps(flat, title=title or "Channel correlation structure (Pearson, last pre-pool map)",
                    vmin=-1.0, vmax=1.0, cmap=DIVERGING, ncols=3)


# --- CD -------------------------------------------------------------------------------------------
def cd_attention(data: Sequence[Mapping[str, Any]] | pd.DataFrame, title: str | None = None) -> Figure:
    """CD's figure: per stage, each model's channel attention with channels ranked by the teacher's
    (the rows of :meth:`CD.attention_data <kdlib.losses.cd.CD.attention_data>`)."""
    data = pd.DataFrame(data)
    stages = sorted(data["stage"].unique())
    fig, axes = plt.subplots(1, len(stages), figsize=(4 * len(stages), 3.4), squeeze=False)
    for ax, stage in zip(axes[0], stages, strict=True):
        part = data[data["stage"] == stage]
        sns.lineplot(data=part, x="channel rank", y="attention", hue="model", ax=ax, legend=ax is axes[0][-1])
        teacher = part[part["model"] == "teacher"]["attention"].to_numpy()
        notes = []
        for model, group in part.groupby("model", sort=False):
            if model != "teacher":
                mse = np.mean((group["attention"].to_numpy() - teacher) ** 2)
                notes.append(f"{model.split(' ')[0]} MSE {mse:.2e}")
        ax.set_title(f"stage {stage}\n" + ", ".join(notes), fontsize="small")
        ax.set_ylabel("channel attention (GAP)")
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small")
    fig.suptitle(title or "Channel attention per stage (batch mean; channels ranked by the teacher)")
    fig.tight_layout()
    return _close(fig)


# --- IE-KD ----------------------------------------------------------------------------------------
def iekd_similarity(data: Mapping[str, Sequence[Mapping[str, Any]]], title: str | None = None) -> Figure:
    """IE-KD's figure: each sample's cosine similarity of each part to the teacher factor (points) and their
    mean with a 95% interval (diamonds), per run (inheritance is pulled towards the teacher factor,
    exploration pushed away); the tick labels give the batch's factor distances ``d`` that the loss uses.
    ``data`` maps each run's label to the rows of its
    :meth:`IEKD.similarity_data <kdlib.losses.iekd.IEKD.similarity_data>`."""
    data = pd.DataFrame([{**row, "run": run} for run, rows in data.items() for row in rows])
    runs = list(dict.fromkeys(data["run"]))
    distance = data.groupby(["run", "part"], sort=False)["distance"].first()
    names = {run: (f"{run}\nd_inh {distance[(run, 'inheritance')]:.4f}"
                   f"\nd_exp {distance[(run, 'exploration')]:.4f}") for run in runs}
    frame = data.assign(run=data["run"].map(names))
    fig, ax = plt.subplots(figsize=(max(6.5, 2.6 * len(runs)), 4.0))
    sns.stripplot(data=frame, x="run", y="cosine", hue="part", dodge=True, alpha=0.35, size=3, ax=ax,
                  legend=False)
    sns.pointplot(data=frame, x="run", y="cosine", hue="part", dodge=0.4, errorbar=("ci", 95),
                  linestyle="none", markers="D", ax=ax)
    ax.set_ylabel("cosine to teacher factor")
    ax.set_xlabel("")
    ax.axhline(0, color="grey", lw=0.8)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(title or "Inheritance and exploration factors vs the teacher factor")
    fig.tight_layout()
    return _close(fig)


# --- CWT ------------------------------------------------------------------------------------------
def cwt_transform(data: Mapping[str, Mapping[str, Any]], title: str | None = None) -> Figure:
    """CWT's figure: per run, heatmaps of ``W₁`` and ``W₂`` and the per-channel correlation with the
    teacher of the transformed (and raw) student map. ``data`` maps each run's label to its
    :meth:`CWT.transform_data <kdlib.losses.cwt.CWT.transform_data>`."""
    fig, axes = plt.subplots(len(data), 3, figsize=(12, 3.6 * len(data)), squeeze=False)
    for row, (label, d) in zip(axes, data.items(), strict=True):
        for ax, key, name in ((row[0], "W1", "W₁ (teacher ch. × student ch.)"), (row[1], "W2", "W₂")):
            w = d[key]
            lim = float(np.abs(w).max()) or 1.0
            sns.heatmap(w, ax=ax, cmap=DIVERGING, vmin=-lim, vmax=lim, square=True, xticklabels=False,
                        yticklabels=False, rasterized=True)
            ax.set_title(f"{label}: {name}", fontsize="small")
        frame = pd.DataFrame({"channel": np.arange(len(d["corr_transformed"])),
                              "MLP(f_s)": d["corr_transformed"]})
        if d.get("corr_raw") is not None:
            frame["raw f_s"] = d["corr_raw"]
        long = frame.melt("channel", var_name="student map", value_name="correlation with f_t")
        sns.histplot(data=long, x="correlation with f_t", hue="student map", ax=row[2], bins=20,
                     binrange=(-1, 1), element="step")
        row[2].set_title(f"{label}: per-channel correlation (L_feat on batch {d['loss']:.3g})",
                         fontsize="small")
    fig.suptitle(title or "CWT's channel-wise transform, learned")
    fig.tight_layout()
    return _close(fig)


# --- rankings -------------------------------------------------------------------------------------
def ranking(table: pd.DataFrame, value: str = "mean", lo: str = "lo", hi: str = "hi",
            label: Sequence[str] = ("method", "variant"), xlabel: str = "top-1 difference (points)",
            title: str | None = None, reference: float | None = 0.0) -> Figure:
    """Points with 95% intervals, sorted by ``value``: e.g. :func:`kdlib.results.paired_differences` (each
    method minus the baseline on the same seeds) or :func:`kdlib.results.summarize` (``top1_last_mean``,
    ``top1_last_lo``, ``top1_last_hi``)."""
    df = table.copy()
    if tuple(label) == ("method", "variant"):  # as readers name a configuration: "iekd (exp_weight 50)"
        df["label"] = [m if v == "default" else f"{m} ({options_in_words(v)})"
                       for m, v in zip(df["method"], df["variant"], strict=True)]
    else:
        df["label"] = ["/".join(str(r[c]) for c in label) for _, r in df.iterrows()]
    if "n" in df:
        df["label"] = [f"{name} (n={int(n)})" for name, n in zip(df["label"], df["n"], strict=True)]
    df = df.sort_values(value, ascending=True).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(df) + 1.4))
    y = np.arange(len(df))
    err = np.vstack([df[value] - df[lo], df[hi] - df[value]]).clip(min=0)
    ax.errorbar(df[value], y, xerr=err, fmt="o", color=sns.color_palette()[0], ecolor="grey", capsize=3)
    ax.set_yticks(y, df["label"])
    if reference is not None:
        ax.axvline(reference, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _close(fig)


def forest(table: pd.DataFrame, xlabel: str = "top-1 difference (points)") -> Figure:
    """A forest plot, one panel per ``baseline`` of ``table`` (its columns ``label``, ``baseline``, ``mean``,
    ``lo``, ``hi``, ``significant``): each configuration's difference with its interval, a filled marker where
    ``significant``, the rows in the order of the first panel's differences. Text is 10 pt at the figure's
    natural size (6.8 inches wide, the book's text column)."""
    baselines = list(dict.fromkeys(table["baseline"]))
    first = table[table["baseline"] == baselines[0]].sort_values("mean")
    order = list(dict.fromkeys([*first["label"], *table["label"]]))
    y = {label: i for i, label in enumerate(order)}
    colour = sns.color_palette("colorblind")[0]
    with plt.rc_context({"font.size": 10, "axes.labelsize": 10, "xtick.labelsize": 10, "ytick.labelsize": 10,
                         "legend.fontsize": 10, "axes.titlesize": 10}):
        fig, axes = plt.subplots(1, len(baselines), sharey=True, squeeze=False,
                                 figsize=(6.8, 0.34 * len(order) + 1.5))
        for ax, baseline in zip(axes[0], baselines, strict=True):
            rows = table[table["baseline"] == baseline]
            ys = [y[label] for label in rows["label"]]
            ax.hlines(ys, rows["lo"], rows["hi"], color="grey", lw=1.5)
            for significant, face in ((True, colour), (False, "white")):
                chosen = rows["significant"] == significant
                ax.plot(rows["mean"][chosen], [v for v, c in zip(ys, chosen, strict=True) if c], "o",
                        color=colour, markerfacecolor=face, markersize=6)
            ax.axvline(0, color="grey", lw=0.8, ls="--")
            ax.set_title(f"minus {baseline}")
        fig.supxlabel(xlabel, y=0.09)
        axes[0][0].set_yticks(range(len(order)), order)
        handles = [Line2D([0], [0], marker="o", ls="", color=colour, markerfacecolor=f, label=name)
                   for f, name in ((colour, "Holm-significant"), ("white", "within the corrected noise"))]
        fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False, bbox_to_anchor=(0.5, 0))
        fig.tight_layout(rect=(0, 0.1, 1, 1))
    return _close(fig)
