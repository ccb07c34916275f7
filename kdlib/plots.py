"""Figures of the notebooks (seaborn / matplotlib): training curves, the methods' own quantities, rankings.

Two kinds of function:

- ``*_data`` functions compute what a figure shows from trained models and a fixed batch, with the package's
  own loss functions (:mod:`kdlib.losses.functional`), so a figure shows exactly what the loss compares;
- plotting functions take that data (or run records / summary tables) and return a
  ``matplotlib.figure.Figure``. Nothing here trains or reads files.

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
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from kdlib.losses.functional import (
    batch_channel_pearson,
    channel_attention,
    channel_pearson,
    factor_distance,
    inter_channel_correlation,
    pool_to_match,
)

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


def training_curves(records: Sequence[Mapping[str, Any]], title: str | None = None,
                    label: str | None = None) -> Figure:
    """Test top-1 and training loss per epoch, one line per run label (``method/variant``, or the record
    field ``label``; mean over seeds, band = 95% interval when several seeds); single epochs are points."""
    df = history_frame(records, label)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    if df.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
        return _close(fig)
    order = list(dict.fromkeys(df["run"]))
    panels = (("top1", "test top-1 (%)"), ("loss", "training loss (sum of terms)"))
    for ax, (column, name) in zip(axes, panels, strict=True):
        sns.lineplot(data=df, x="epoch", y=column, hue="run", hue_order=order, marker="o",
                     errorbar=("ci", 95), ax=ax, legend=ax is axes[-1])
        ax.set_ylabel(name)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small", title=label or "run")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _close(fig)


def loss_terms(records: Sequence[Mapping[str, Any]], title: str | None = None) -> Figure:
    """Each named (weighted) loss term per epoch, one panel per term, one line per run label."""
    df = history_frame(records)
    terms = [c for c in df.columns if c.startswith("loss:")]
    fig, axes = plt.subplots(1, max(1, len(terms)), figsize=(3.6 * max(1, len(terms)), 3.2), squeeze=False)
    for ax, term in zip(axes[0], terms, strict=False):
        sns.lineplot(data=df.dropna(subset=[term]), x="epoch", y=term, hue="run", marker="o", ax=ax,
                     legend=ax is axes[0][-1])
        ax.set_title(term.split(":", 1)[1])
        ax.set_ylabel("weighted term")
        ax.xaxis.get_major_locator().set_params(integer=True)
    if terms:
        axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
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


def _features(model: nn.Module, x: Tensor) -> list[Tensor]:
    was = model.training
    model.eval()
    with torch.no_grad():
        _, feats = model(x, with_features=True)
    model.train(was)
    return feats


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared difference of two matrices (NaN when shapes differ)."""
    return float(np.mean((a - b) ** 2)) if a.shape == b.shape else float("nan")


# --- ICKD -----------------------------------------------------------------------------------------
@torch.no_grad()
def ickd_data(distiller: Any, vanilla: nn.Module, x: Tensor, normalize: bool = True) -> dict[str, np.ndarray]:
    """Batch-mean inter-channel correlation ``Ĝ`` (:func:`~kdlib.losses.functional.inter_channel_correlation`,
    rows L2-normalised as in the ``code`` variant) of the last pre-pool map: teacher ``f_t``, distilled
    student after its embedding ``e(f_s)`` (what the loss compares), vanilla student ``f_s``."""
    f_t = _features(distiller.teacher, x)[-2]
    f_s = distiller.embed(_features(distiller.student, x)[-2])
    f_v = _features(vanilla, x)[-2]
    return {name: inter_channel_correlation(f, normalize).mean(0).numpy()
            for name, f in (("teacher", f_t), ("ICKD student e(f_s)", f_s), ("vanilla student", f_v))}


def ickd_correlations(data: Mapping[str, np.ndarray], title: str | None = None) -> Figure:
    """ICKD's figure: the three channel-correlation matrices; titles give the mean squared difference to
    the teacher's."""
    teacher = data["teacher"]
    named = {(k if k == "teacher" else f"{k}\nMSE to teacher {_distance(v, teacher):.2e}"): v
             for k, v in data.items()}
    return heatmaps(named, title=title or "Inter-channel correlation Ĝ (batch mean, last pre-pool map)",
                    vmin=0.0)


# --- CCS ------------------------------------------------------------------------------------------
@torch.no_grad()
def ccs_data(distiller: Any, vanilla: nn.Module, x: Tensor) -> dict[str, dict[str, np.ndarray]]:
    """CCS's two matrices for teacher, distilled student (after its projector) and vanilla student:
    ``intra`` = batch mean of the per-sample channel Pearson matrices R_b, ``inter`` = the channel Pearson
    matrix over the batch (pooled channels as observations)."""
    eps = distiller.config.eps
    feats_s, feats_t = _features(distiller.student, x), _features(distiller.teacher, x)
    tap_s, tap_t = distiller.tap_indices(len(feats_s), len(feats_t))
    f_t = feats_t[tap_t[-1]]
    f_s = distiller.projectors[-1](feats_s[tap_s[-1]])
    f_v = _features(vanilla, x)[-2]
    out: dict[str, dict[str, np.ndarray]] = {"intra": {}, "inter": {}}
    for name, f in (("teacher", f_t), ("CCS student", f_s), ("vanilla student", f_v)):
        out["intra"][name] = channel_pearson(f, eps).mean(0).numpy()
        out["inter"][name] = batch_channel_pearson(f, eps).numpy()
    return out


def ccs_matrices(data: Mapping[str, Mapping[str, np.ndarray]], title: str | None = None) -> Figure:
    """CCS's figure: intra-instance (top) and inter-instance (bottom) Pearson matrices, on [-1, 1]."""
    flat = {}
    for kind, label in (("intra", "intra-instance"), ("inter", "inter-instance")):
        teacher = data[kind]["teacher"]
        for name, m in data[kind].items():
            extra = "" if name == "teacher" else f"\nMSE to teacher {_distance(m, teacher):.2e}"
            flat[f"{label}: {name}{extra}"] = m
    return heatmaps(flat, title=title or "Channel correlation structure (Pearson, last pre-pool map)",
                    vmin=-1.0, vmax=1.0, cmap=DIVERGING, ncols=3)


# --- CD -------------------------------------------------------------------------------------------
@torch.no_grad()
def cd_data(distiller: Any, vanilla: nn.Module, x: Tensor) -> pd.DataFrame:
    """CD's channel attention ``w = GAP(f)`` (batch mean) per paired stage: teacher, distilled student after
    its connector (what the loss compares) and vanilla student (raw stage output). Long table: stage,
    model, channel (ranked by the teacher's attention), attention."""
    feats_t, feats_s, feats_v = (_features(m, x) for m in (distiller.teacher, distiller.student, vanilla))
    stages_s, stages_t = distiller.paired_stages(feats_s, feats_t)
    stages_v, _ = distiller.paired_stages(feats_v, feats_t)
    rows = []
    for k, (f_s, f_t, f_v, conn) in enumerate(zip(stages_s, stages_t, stages_v, distiller.connectors,
                                                   strict=True), start=1):
        w_t = channel_attention(f_t).mean(0)
        order = torch.argsort(w_t, descending=True)
        for name, w in (("teacher", w_t), ("CD student (connector)", channel_attention(conn(f_s)).mean(0)),
                        ("vanilla student", channel_attention(f_v).mean(0))):
            if w.numel() != w_t.numel():
                continue
            for rank, channel in enumerate(order.tolist()):
                rows.append({"stage": k, "model": name, "channel rank": rank, "attention": float(w[channel])})
    return pd.DataFrame(rows)


def cd_attention(data: pd.DataFrame, title: str | None = None) -> Figure:
    """CD's figure: per stage, each model's channel attention with channels ranked by the teacher's."""
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
@torch.no_grad()
def iekd_data(distillers: Mapping[str, Any], x: Tensor) -> pd.DataFrame:
    """IE-KD: per sample, the cosine similarity of the student's inheritance and exploration factors to the
    teacher factor ``F_T = E(f_t)`` (flattened), and the batch's factor distances ``d``
    (:func:`~kdlib.losses.functional.factor_distance`, what the loss uses). Long table: run, part, sample,
    cosine, distance."""
    rows = []
    for label, distiller in distillers.items():
        f_t = _features(distiller.teacher, x)[-2]
        factor_t = distiller.autoencoder.encoder(f_t)
        f_s = _features(distiller.student, x)[-2].index_select(1, distiller.split_index)
        parts = {"inheritance": distiller.inherit_encoder(f_s[:, : distiller.n_inherit]),
                 "exploration": distiller.explore_encoder(f_s[:, distiller.n_inherit :])}
        for part, factor in parts.items():
            a, b = pool_to_match(factor, factor_t)
            cos = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)
            distance = float(factor_distance(b, a))
            rows += [{"run": label, "part": part, "sample": i, "cosine": float(c), "distance": distance}
                     for i, c in enumerate(cos)]
    return pd.DataFrame(rows)


def iekd_similarity(data: pd.DataFrame, title: str | None = None) -> Figure:
    """IE-KD's figure: each sample's cosine similarity of each part to the teacher factor (points) and their
    mean with a 95% interval (diamonds), per run (inheritance is pulled towards the teacher factor,
    exploration pushed away); the tick labels give the batch's factor distances ``d`` that the loss uses."""
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
@torch.no_grad()
def cwt_data(distiller: Any, x: Tensor) -> dict[str, Any]:
    """CWT's transform ``MLP(f_s) = W₂·ReLU(W₁·f_s)``: the 1×1 weights ``W₁`` (C_t×C_s), ``W₂`` (C_t×C_t), and
    per teacher channel the Pearson correlation over batch and positions between ``MLP(f_s)`` and ``f_t``
    (and, where channels match, between the raw ``f_s`` and ``f_t``)."""
    convs = [m for m in distiller.transform if isinstance(m, nn.Conv2d)]
    f_t = _features(distiller.teacher, x)[-2]
    f_s_raw = _features(distiller.student, x)[-2]
    mapped, f_t_m = pool_to_match(distiller.transform(f_s_raw), f_t)

    def per_channel(a: Tensor, b: Tensor) -> np.ndarray:
        a = a.transpose(0, 1).flatten(1)
        b = b.transpose(0, 1).flatten(1)
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-12)).numpy()

    raw = per_channel(*pool_to_match(f_s_raw, f_t)) if f_s_raw.shape[1] == f_t.shape[1] else None
    return {"W1": convs[0].weight[:, :, 0, 0].numpy(), "W2": convs[1].weight[:, :, 0, 0].numpy(),
            "corr_transformed": per_channel(mapped, f_t_m), "corr_raw": raw,
            "loss": float((mapped - f_t_m).pow(2).sum() / x.shape[0])}


def cwt_transform(data: Mapping[str, Mapping[str, Any]], title: str | None = None) -> Figure:
    """CWT's figure: per run, heatmaps of ``W₁`` and ``W₂`` and the per-channel correlation with the
    teacher of the transformed (and raw) student map."""
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
