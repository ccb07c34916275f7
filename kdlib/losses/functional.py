"""Pure tensor functions for every distillation loss of the study (the math, nothing learnable).

Conventions shared by all functions here:

- **Unweighted.** The method weights (β, γ, λ …) live in each method's configuration; only the T² factor of
  KD and GKD is part of the loss, as in the official code.
- **Student first, teacher second.** Gradients flow to whatever requires grad; the teacher is expected to come
  from a frozen network under ``torch.no_grad()`` (the caller detaches it). Exception: :func:`rkd_loss`
  reproduces RepDistiller, which computes its teacher terms under ``no_grad`` itself.
- **Inputs are never modified**; every function works in float32 and float64 and returns a 0-dim tensor
  (except the matrix helpers and :func:`edt_weights`).
- **Full precision whatever the autocast state.** Every loss is decorated with :func:`float32_loss`: autocast
  is off inside it and half-precision inputs (bf16, fp16) are cast to float32 first, so a loss is the same
  function of the features under bf16 autocast as without it (RKD's and PKT's Gram matrices of near-collinear
  features were ×3–×9 off when autocast ran them in bf16).
- Every statement is tagged: **[code]** what the official repository computes,
  **[paper]** the paper's text, **[assumption]** our choice where no source settles it.

Sources (repository @ commit):

- RepDistiller: ``HobbitLong/RepDistiller`` ``distiller_zoo`` (KD, FitNet, AT, SP, RKD, PKT).
- ICKD: ``ADLab-AutoDrive/ICKD@403b8d3`` (``Cifar100/distiller_zoo/ICKD.py``; the ImageNet fork's
  ``ChSimLoss``).
- CD + GKD + EDT: ``zhouzaida/channel-distillation@2464d30``.
- IE-KD: ``aliyun/Revisiting-Knowledge-Distillation-an-Inheritance-and-Exploration-Framework@3274ab0``.
- CCS (Li et al., KSEM 2021) and CWT (Liu et al., ICCVW 2023): no public code, everything is [assumption]
  beyond the abstracts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlib.losses.precision import float32_loss

__all__ = [
    "ICKD_VARIANTS",
    "CCS_INTER_VARIANTS",
    "EDT_VARIANTS",
    "EDT_DATASETS",
    "float32_loss",
    "ce_loss",
    "kd_loss",
    "inter_channel_correlation",
    "grid_cell_bounds",
    "ickd_loss",
    "channel_attention",
    "cd_loss",
    "gkd_loss",
    "edt_weights",
    "factor_distance",
    "reconstruction_loss",
    "channel_pearson",
    "batch_channel_pearson",
    "ccs_intra_loss",
    "ccs_inter_loss",
    "cwt_loss",
    "pool_to_match",
    "fitnet_loss",
    "attention_map",
    "at_loss",
    "sp_loss",
    "rkd_loss",
    "pkt_loss",
]

ICKD_VARIANTS = ("code", "paper", "imagenet")
CCS_INTER_VARIANTS = ("channel", "sample")
EDT_VARIANTS = ("code", "paper")
EDT_DATASETS = ("cifar100", "imagenet")


# --------------------------------------------------------------------------------------------- helpers
def _choice(kind: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; choose one of: {', '.join(map(repr, allowed))}")


def _check_4d(name: str, f: Tensor) -> None:
    if f.dim() != 4:
        raise ValueError(f"{name} must be a B×C×H×W feature map, got shape {tuple(f.shape)}")


def _check_same_bc(f_s: Tensor, f_t: Tensor) -> None:
    if f_s.shape[:2] != f_t.shape[:2]:
        raise ValueError(
            f"student and teacher must have the same batch size and channels (embed the student first), "
            f"got {tuple(f_s.shape)} and {tuple(f_t.shape)}"
        )


def _check_same_shape(f_s: Tensor, f_t: Tensor) -> None:
    if f_s.shape != f_t.shape:
        raise ValueError(
            f"student and teacher must have the same shape for a point-wise loss, got {tuple(f_s.shape)} and "
            f"{tuple(f_t.shape)}; use pool_to_match() for maps of different H×W"
        )


def _as_list(feats: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [feats] if isinstance(feats, Tensor) else list(feats)


def _paired(
    feats_s: Tensor | Sequence[Tensor], feats_t: Tensor | Sequence[Tensor]
) -> list[tuple[Tensor, Tensor]]:
    s, t = _as_list(feats_s), _as_list(feats_t)
    if len(s) != len(t):
        raise ValueError(f"student and teacher feature lists differ in length: {len(s)} vs {len(t)}")
    if not s:
        raise ValueError("empty feature lists: at least one (student, teacher) pair is needed")
    return list(zip(s, t, strict=True))


# --------------------------------------------------------------------------------------------- precision
@float32_loss
def ce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy, ``F.cross_entropy`` (mean over the batch), in float32."""
    return F.cross_entropy(logits, labels)


# --------------------------------------------------------------------------------------------- KD
@float32_loss
def kd_loss(logits_s: Tensor, logits_t: Tensor, T: float) -> Tensor:
    r"""Hinton's knowledge distillation, RepDistiller ``DistillKL``.

    ``KD_T = T² · Σ_b KL(softmax(z_t,b / T) ‖ softmax(z_s,b / T)) / B``: KL summed over classes, averaged
    over the batch, times T² [code: RepDistiller ``distiller_zoo/KD.py``, identical in the CD repository].

    Args:
        logits_s: student logits, B×K.
        logits_t: teacher logits, B×K.
        T: temperature (4 on CIFAR-100 in RepDistiller).
    """
    if logits_s.shape != logits_t.shape:
        raise ValueError(f"logit shapes differ: {tuple(logits_s.shape)} vs {tuple(logits_t.shape)}")
    log_p_s = F.log_softmax(logits_s / T, dim=1)
    p_t = F.softmax(logits_t / T, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="sum") * (T**2) / logits_s.shape[0]


# --------------------------------------------------------------------------------------------- ICKD
def inter_channel_correlation(f: Tensor, normalize: bool = True) -> Tensor:
    r"""ICKD's inter-channel correlation ``G = F·Fᵀ`` per image (B×C×C), ``F ∈ R^{C×HW}``.

    With ``normalize=True`` each row of G is L2-normalised, ``F.normalize(G, dim=2)`` with eps 1e-12
    [code: ICKD@403b8d3 ``Cifar100/distiller_zoo/ICKD.py``]; ``normalize=False`` is the paper's raw G [paper].
    """
    _check_4d("f", f)
    flat = f.reshape(f.shape[0], f.shape[1], -1)
    gram = torch.bmm(flat, flat.transpose(1, 2))
    return F.normalize(gram, dim=2) if normalize else gram


def grid_cell_bounds(size: int, cells: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each of ``cells`` cells along an axis of length ``size``.

    ``start = ⌊i·size/cells⌋``, ``end = ⌈(i+1)·size/cells⌉``: the boundaries of ``torch``'s adaptive pooling.
    When ``cells`` divides ``size`` the cells are equal and disjoint (the grid of the ICKD README); otherwise
    neighbouring cells may share a row/column, exactly like ``adaptive_avg_pool2d`` [assumption].
    """
    if cells < 1:
        raise ValueError(f"grid cells per side must be >= 1, got {cells}")
    return [((i * size) // cells, -((-(i + 1) * size) // cells)) for i in range(cells)]


@float32_loss
def ickd_loss(f_s: Tensor, f_t: Tensor, variant: str = "code", grid: tuple[int, int] = (1, 1)) -> Tensor:
    r"""ICKD, Inter-Channel Correlation distillation (Liu et al., ICCV 2021).

    Per image ``G = F·Fᵀ ∈ R^{C×C}`` with ``F ∈ R^{C×HW}`` (see :func:`inter_channel_correlation`); the
    student map must already be embedded to the teacher's C (1×1 conv + BN, done by the method module). H×W of
    student and teacher may differ, since G is C×C either way.

    Variants:

    - ``"code"`` (default): rows of G L2-normalised (``F.normalize(G, dim=2)``, eps 1e-12),
      ``L = Σ (Ĝ_s − Ĝ_t)² / (C·B)`` [code: ICKD@403b8d3 ``Cifar100/distiller_zoo/ICKD.py``].
    - ``"paper"``: no normalisation, ``L = Σ (G_s − G_t)² / (C²·B)`` [paper,
      second-hand: quoted in thread #3 of the official ICKD repository].
    - ``"imagenet"``: as ``"code"`` but divided by ``C·B²`` [code: the ImageNet fork's ``ChSimLoss``].

    Grid-level ICKD: ``grid=(m, n)`` splits each map into m cells along H and n along W (each map on its own
    H×W), computes the loss above per cell and averages over the m·n cells; ``(1, 1)`` is the image-level loss
    [assumption: no training code was released; the README lists grids 1, 4, 16, 32]. If m does not divide H
    (or n, W) the cell boundaries are those of ``adaptive_avg_pool2d`` (see :func:`grid_cell_bounds`)
    [assumption].

    Raises:
        ValueError: unknown variant, bad grid, or student/teacher batch or channels differ.
    """
    _choice("ICKD variant", variant, ICKD_VARIANTS)
    _check_4d("f_s", f_s)
    _check_4d("f_t", f_t)
    _check_same_bc(f_s, f_t)
    m, n = grid
    b, c = f_t.shape[:2]
    normalize = variant != "paper"
    divisor = {"code": c * b, "paper": c * c * b, "imagenet": c * b * b}[variant]

    rows_s, cols_s = grid_cell_bounds(f_s.shape[2], m), grid_cell_bounds(f_s.shape[3], n)
    rows_t, cols_t = grid_cell_bounds(f_t.shape[2], m), grid_cell_bounds(f_t.shape[3], n)
    total = f_s.new_zeros(())
    for (hs0, hs1), (ht0, ht1) in zip(rows_s, rows_t, strict=True):
        for (ws0, ws1), (wt0, wt1) in zip(cols_s, cols_t, strict=True):
            g_s = inter_channel_correlation(f_s[:, :, hs0:hs1, ws0:ws1], normalize)
            g_t = inter_channel_correlation(f_t[:, :, ht0:ht1, wt0:wt1], normalize)
            total = total + (g_s - g_t).pow(2).sum() / divisor
    return total / (m * n)


# --------------------------------------------------------------------------------------------- CD + GKD + EDT
def channel_attention(f: Tensor) -> Tensor:
    """CD's channel attention: global average pool per channel, B×C×H×W → B×C [code: CD@2464d30]."""
    _check_4d("f", f)
    return f.mean(dim=(2, 3))


@float32_loss
def cd_loss(feats_s: Tensor | Sequence[Tensor], feats_t: Tensor | Sequence[Tensor]) -> Tensor:
    r"""Channel Distillation (Zhou et al., arXiv 2006.01683).

    ``L_CD = Σ_stages mean_{b,c} (w_s − w_t)²`` with ``w = GAP(f) ∈ R^{B×C}`` the channel attention
    (:func:`channel_attention`), equal stage weights; the CD weight (6, decayed by EDT) is applied outside
    [code: CD@2464d30 ``CDLoss``]. Student maps must already be through their connectors (same C as the
    teacher's stage); H×W may differ since the maps are pooled. A single tensor is treated as one stage.

    Raises:
        ValueError: the lists differ in length (the official ``zip`` would silently truncate) or are empty.
    """
    total: Tensor | None = None
    for f_s, f_t in _paired(feats_s, feats_t):
        _check_4d("student stage", f_s)
        _check_4d("teacher stage", f_t)
        _check_same_bc(f_s, f_t)
        term = (channel_attention(f_s) - channel_attention(f_t)).pow(2).mean()
        total = term if total is None else total + term
    assert total is not None
    return total


@float32_loss
def gkd_loss(logits_s: Tensor, logits_t: Tensor, labels: Tensor, T: float = 1.0) -> Tensor:
    r"""Guided KD: KD restricted to the samples the teacher classifies correctly (CD paper).

    ``L_GKD = T² · Σ_{b: argmax z_t,b = y_b} KL(p_t,b ‖ p_s,b) / K``, K the number of correct samples,
    ``p = softmax(z / T)``, KL summed over classes [code: CD@2464d30 ``KDLossv2``; T = 1 in every config].

    Fixes relative to the official code (CD@2464d30):

    - The official code divides by K without a guard and **returns NaN when K = 0**; here the per-sample KL
      is masked to the correct rows and the sum is divided by ``max(K, 1)``, so K = 0 gives an exact 0 that
      is still a differentiable function of ``logits_s`` (zero, finite gradient). Masking (not indexing)
      keeps every shape fixed and K on the device: no host sync, and one compiled graph for any K.
    - The official code masks the probabilities and replaces zeros by 1, which mis-handles teacher
      probabilities that underflow to 0; here both distributions are computed with ``log_softmax`` and the
      KL with ``F.kl_div(log_p_s, log_p_t, log_target=True, reduction="sum")``, finite for any logit gap.
    - "Correct" uses ``argmax`` of the teacher *logits* (equal to the argmax of its softmax except for ties
      created by rounding in the softmax) [assumption].
    """
    if logits_s.shape != logits_t.shape:
        raise ValueError(f"logit shapes differ: {tuple(logits_s.shape)} vs {tuple(logits_t.shape)}")
    if labels.shape != logits_s.shape[:1]:
        raise ValueError(f"labels must have shape ({logits_s.shape[0]},), got {tuple(labels.shape)}")
    correct = logits_t.argmax(dim=1) == labels
    log_p_s = F.log_softmax(logits_s / T, dim=1)
    log_p_t = F.log_softmax(logits_t / T, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="none").sum(dim=1)
    return kl.where(correct, 0.0).sum() * (T**2) / correct.sum().clamp(min=1)


def edt_weights(
    epoch: int, dataset: str, variant: str = "code", epochs: int | None = None
) -> dict[str, float]:
    r"""Early Decay Teacher (CD paper): the loss multipliers of a 1-indexed epoch.

    Returns ``{"ce": w, "gkd": w, "cd": w}``; ``ce`` and ``gkd`` are 0/1 multipliers of the CE and GKD
    terms (the GKD base weight, 0.1 on CIFAR / 1 on ImageNet, is applied outside), ``cd`` already includes
    the CD base weight 6 (``cd`` = 6.0 at epoch 1). Weights are fixed for a whole epoch [code: CD@2464d30]:

    - ``"imagenet"`` (100 epochs): ``ce = gkd = 0`` for e ≤ 30 else 1; ``cd = 6·0.9^⌊e/30⌋``.
    - ``"cifar100"`` (200 epochs): ``ce = gkd = 0`` for e ≤ 60 else 1; ``cd = 6·0.9^k`` with k = 0 for
      e < 60, 1 for 60 ≤ e < 160, 2 for e ≥ 160.

    ``variant="paper"``: ``ce = gkd = 1`` always, only the CD weight decays [paper; the maintainers confirm
    the code's CE/GKD warm-up is deliberate, threads #3, #5, #10 of the official CD repository].

    ``epochs`` (other schedule lengths, e.g. the 240-epoch RepDistiller recipe or a short proxy run): the
    boundaries scale proportionally with the schedule, base 100 (imagenet) or 200 (cifar100) [assumption].
    Rounding rule: the epoch is mapped to the base schedule as the exact fraction ``s = e·base/epochs`` and
    ``s`` is compared with the original boundaries (``s ≤ 30``, ``⌊s/30⌋`` …), so a scaled boundary
    ``b·epochs/base`` that is not an integer takes effect at the first epoch past it, and ``epochs=base``
    reproduces the tables exactly.

    Raises:
        ValueError: unknown dataset or variant, epoch < 1, epochs < 1.
    """
    _choice("EDT dataset", dataset, EDT_DATASETS)
    _choice("EDT variant", variant, EDT_VARIANTS)
    if epoch < 1:
        raise ValueError(f"epoch is 1-indexed, got {epoch}")
    base = 100 if dataset == "imagenet" else 200
    if epochs is None:
        epochs = base
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    s = Fraction(epoch) * base / epochs
    if dataset == "imagenet":
        warm = s <= 30
        k = math.floor(s / 30)
    else:
        warm = s <= 60
        k = 0 if s < 60 else (1 if s < 160 else 2)
    on = 0.0 if (warm and variant == "code") else 1.0
    return {"ce": on, "gkd": on, "cd": 6.0 * 0.9**k}


# --------------------------------------------------------------------------------------------- IE-KD
@float32_loss
def factor_distance(x: Tensor, y: Tensor) -> Tensor:
    r"""IE-KD's distance between factors: ``d(x, y) = mean |x̂ − ŷ|``.

    x̂, ŷ are the per-sample flattened factors L2-normalised (``F.normalize(·.view(B, -1), dim=1)``,
    eps 1e-12); the mean runs over all B·D elements [code: IE-KD@3274ab0 ``_factor_transfer`` with p = 1].
    The inheritance term is ``+λ_inh·d(F_T, F_inh)``; the exploration term is its negative,
    ``−λ_exp·d(F_T, F_exp)`` [code: ``NormLoss(negative=True)``]. Bounded: ``0 ≤ d ≤ 2``.
    """
    if x.shape[0] != y.shape[0] or x[0].numel() != y[0].numel():
        raise ValueError(
            f"factors must have the same batch size and size per sample: {tuple(x.shape)} vs {tuple(y.shape)}"
        )
    x_hat = F.normalize(x.reshape(x.shape[0], -1), dim=1)
    y_hat = F.normalize(y.reshape(y.shape[0], -1), dim=1)
    return (x_hat - y_hat).abs().mean()


@float32_loss
def reconstruction_loss(reconstruction: Tensor, target: Tensor, kind: str = "l1") -> Tensor:
    """IE-KD's stage-A loss: ``mean |D(E(f_t)) − f_t|`` (``l1``) [code], or the mean squared error (``l2``)
    [paper]."""
    _choice("reconstruction", kind, ("l1", "l2"))
    if kind == "l1":
        return (reconstruction - target).abs().mean()
    return F.mse_loss(reconstruction, target)


# --------------------------------------------------------------------------------------------- CCS
def _pearson_from_centred(xc: Tensor, eps: float) -> Tensor:
    """Pearson matrix of the rows of ``xc`` (…×C×N, centred over N): ``cov / sqrt(var_i·var_j + eps)``."""
    cov = torch.matmul(xc, xc.transpose(-1, -2)) / xc.shape[-1]
    var = torch.diagonal(cov, dim1=-2, dim2=-1)
    return cov / torch.sqrt(var.unsqueeze(-1) * var.unsqueeze(-2) + eps)


def channel_pearson(f: Tensor, eps: float = 1e-6) -> Tensor:
    r"""Intra-instance channel correlation (CCS): one C×C Pearson matrix per sample, B×C×C.

    For each sample, each channel is centred over its H·W positions, ``cov = X_c·X_cᵀ / (H·W)`` (population
    normalisation) and ``R_ij = cov_ij / sqrt(var_i·var_j + eps)`` [assumption: CCS has no public code; the
    abstract names Cov/Var, Pearson-style correlation]. ``eps`` guards dead (zero-variance) channels, whose
    rows and columns become 0; entries lie in [-1, 1]. Note ``eps`` is compared with ``var²`` (units of f⁴),
    so it shrinks ``|R|`` for channels whose variance is not ≫ sqrt(eps) [assumption].
    """
    _check_4d("f", f)
    flat = f.reshape(f.shape[0], f.shape[1], -1)
    return _pearson_from_centred(flat - flat.mean(dim=2, keepdim=True), eps)


def batch_channel_pearson(v: Tensor, eps: float = 1e-6) -> Tensor:
    r"""Inter-instance channel correlation (CCS): one C×C Pearson matrix over the batch.

    ``v ∈ R^{B×C}`` (pooled channels; a B×C×H×W map is global-average-pooled first) is centred over the batch
    and ``R_ij = cov_ij / sqrt(var_i·var_j + eps)`` with the B samples as observations, ``cov = V_cᵀ·V_c / B``
    [assumption]. With B = 1 every entry is 0.
    """
    if v.dim() == 4:
        v = v.mean(dim=(2, 3))
    if v.dim() != 2:
        raise ValueError(f"v must be B×C (or a B×C×H×W map to pool), got shape {tuple(v.shape)}")
    vc = (v - v.mean(dim=0, keepdim=True)).transpose(0, 1)  # C×B
    return _pearson_from_centred(vc, eps)


@float32_loss
def ccs_intra_loss(f_s: Tensor, f_t: Tensor, eps: float = 1e-6) -> Tensor:
    r"""CCS intra-instance term: ``L_intra = mean_b ‖R_b^s − R_b^t‖²_F / C²``.

    ``R_b`` from :func:`channel_pearson`; H×W of student and teacher may differ (R is C×C). Bounded by 4.
    Everything is [assumption] (CCS, Li et al. KSEM 2021: no public code, abstract only).
    """
    _check_4d("f_s", f_s)
    _check_4d("f_t", f_t)
    _check_same_bc(f_s, f_t)
    c = f_t.shape[1]
    diff = channel_pearson(f_s, eps) - channel_pearson(f_t, eps)
    return diff.pow(2).sum(dim=(1, 2)).mean() / (c * c)


@float32_loss
def ccs_inter_loss(f_s: Tensor, f_t: Tensor, eps: float = 1e-6, variant: str = "channel") -> Tensor:
    r"""CCS inter-instance term, two readings of the abstract (all [assumption]).

    - ``"channel"`` (default): ``V = GAP(f) ∈ R^{B×C}``, R the C×C Pearson matrix with the batch as
      observations (:func:`batch_channel_pearson`), ``L_inter = ‖R^s − R^t‖²_F / C²``. Inputs may also be
      already-pooled B×C tensors. Needs B ≥ 2 to carry information.
    - ``"sample"``: the alternative reading, a B×B similarity between samples,
      ``S_ab = cos(vec R_a, vec R_b)`` with ``R_b`` the intra-instance Pearson matrices
      (:func:`channel_pearson`), cosine via ``F.normalize`` (eps 1e-12), ``L_inter = ‖S^s − S^t‖²_F / B²``.

    Both are bounded by 4.
    """
    _choice("CCS inter variant", variant, CCS_INTER_VARIANTS)
    if f_s.shape[:2] != f_t.shape[:2]:
        raise ValueError(
            f"student and teacher must have the same batch size and channels, got {tuple(f_s.shape)} and "
            f"{tuple(f_t.shape)}"
        )
    if variant == "channel":
        c = f_t.shape[1]
        diff = batch_channel_pearson(f_s, eps) - batch_channel_pearson(f_t, eps)
        return diff.pow(2).sum() / (c * c)
    b = f_t.shape[0]

    def similarity(f: Tensor) -> Tensor:
        r = F.normalize(channel_pearson(f, eps).reshape(b, -1), dim=1)
        return r @ r.transpose(0, 1)

    return (similarity(f_s) - similarity(f_t)).pow(2).sum() / (b * b)


# --------------------------------------------------------------------------------------------- CWT
@float32_loss
def cwt_loss(f_s_transformed: Tensor, f_t: Tensor) -> Tensor:
    r"""CWT feature loss: ``L_feat = Σ (MLP(f_s) − f_t)² / B``.

    The student map is already through the channel-wise transform ``W₂·ReLU(W₁·f_s)`` (method module)
    [paper: secondary restatement of arXiv 2303.13212]. The sum over all elements divided by the batch size
    is [assumption] (a third-party port uses it with α = 5e-3). Shapes must match (see :func:`pool_to_match`).
    """
    _check_same_shape(f_s_transformed, f_t)
    return (f_s_transformed - f_t).pow(2).sum() / f_t.shape[0]


# --------------------------------------------------------------------------------------------- baselines
def pool_to_match(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the spatially larger of two maps to the other's H×W; return ``(f_s, f_t)``.

    Both are pooled to ``(min(H_s, H_t), min(W_s, W_t))`` (a no-op for the map already that size), which for
    the usual case is "pool the larger to the smaller" [assumption for point-wise losses across architectures,
    as RepDistiller's AT does for attention maps].
    """
    _check_4d("f_s", f_s)
    _check_4d("f_t", f_t)
    size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
    if tuple(f_s.shape[2:]) != size:
        f_s = F.adaptive_avg_pool2d(f_s, size)
    if tuple(f_t.shape[2:]) != size:
        f_t = F.adaptive_avg_pool2d(f_t, size)
    return f_s, f_t


@float32_loss
def fitnet_loss(f_s_regressed: Tensor, f_t: Tensor) -> Tensor:
    """FitNet hint loss: ``mean (r(f_s) − f_t)²`` [code: RepDistiller ``HintLoss`` = ``nn.MSELoss()``].

    The student map is already through RepDistiller's ``ConvReg`` regressor; shapes must match.
    """
    _check_same_shape(f_s_regressed, f_t)
    return F.mse_loss(f_s_regressed, f_t)


def attention_map(f: Tensor, p: int = 2) -> Tensor:
    """AT's spatial attention ``F.normalize(mean_c f^p flattened per sample)``, B×HW [code: RepDistiller]."""
    return F.normalize(f.pow(p).mean(1).reshape(f.shape[0], -1))


@float32_loss
def at_loss(feats_s: Tensor | Sequence[Tensor], feats_t: Tensor | Sequence[Tensor], p: int = 2) -> Tensor:
    r"""Attention Transfer (Zagoruyko & Komodakis 2017), RepDistiller ``Attention``.

    ``L = Σ_pairs mean((at(f_s) − at(f_t))²)`` with ``at(f) = F.normalize(f^p.mean(1).view(B, −1))``
    (:func:`attention_map`); RepDistiller returns the per-pair list and its trainer sums it [code]. When a
    pair's maps differ in H×W the larger is adaptive-avg-pooled to the smaller (:func:`pool_to_match`);
    RepDistiller compares H only and pools to a square ``(H, H)``, identical for its square maps.

    Raises:
        ValueError: the lists differ in length or are empty.
    """
    total: Tensor | None = None
    for f_s, f_t in _paired(feats_s, feats_t):
        f_s, f_t = pool_to_match(f_s, f_t)
        term = (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()
        total = term if total is None else total + term
    assert total is not None
    return total


@float32_loss
def sp_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    r"""Similarity-Preserving KD (Tung & Mori 2019), RepDistiller ``Similarity`` for one pair.

    ``G = f·fᵀ`` over per-sample flattened features (B×B), rows L2-normalised (``F.normalize``, dim 1),
    ``L = ‖G_s − G_t‖²_F / B²`` [code]. RepDistiller returns a 1-element tensor; this returns a scalar.
    """
    if f_s.shape[0] != f_t.shape[0]:
        raise ValueError(f"batch sizes differ: {f_s.shape[0]} vs {f_t.shape[0]}")
    b = f_s.shape[0]

    def gram(f: Tensor) -> Tensor:
        flat = f.reshape(b, -1)
        return F.normalize(flat @ flat.t())

    return (gram(f_t) - gram(f_s)).pow(2).sum() / (b * b)


def _rkd_pdist(e: Tensor, squared: bool = False, eps: float = 1e-12) -> Tensor:
    """RepDistiller ``RKDLoss.pdist``: pairwise Euclidean distances, clamped at eps, zero diagonal."""
    e_square = e.pow(2).sum(dim=1)
    prod = e @ e.t()
    res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * prod).clamp(min=eps)
    if not squared:
        res = res.sqrt()
    res = res.clone()
    idx = torch.arange(len(e), device=e.device)
    res[idx, idx] = 0
    return res


def _rkd_angles(e: Tensor) -> Tensor:
    diff = e.unsqueeze(0) - e.unsqueeze(1)
    unit = F.normalize(diff, p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2)).reshape(-1)


def _positive_mean(d: Tensor) -> Tensor:
    """``d[d > 0].mean()`` of a distance matrix (entries ≥ 0) as a sum over a count: no boolean indexing, so
    no data-dependent shape, no host sync and no graph break when compiled; equal up to rounding."""
    return d.sum() / (d > 0).sum()


@float32_loss
def rkd_loss(emb_s: Tensor, emb_t: Tensor, w_dist: float = 25.0, w_angle: float = 50.0) -> Tensor:
    r"""Relational KD (Park et al. 2019), RepDistiller ``RKDLoss`` exactly.

    Embeddings flattened per sample. Distance term: ``d = pdist(e) / mean(pdist(e)[pdist > 0])`` with
    RepDistiller's ``pdist`` (squared distances clamped at 1e-12, square root, zero diagonal),
    ``smooth_l1(d_s, d_t)``. Angle term: for all triplets, cosines between ``e_i − e_j`` and ``e_k − e_j``
    (``F.normalize``), ``smooth_l1(a_s, a_t)``. ``L = w_dist·L_dist + w_angle·L_angle`` with RepDistiller's
    internal weights 25 and 50 (the outer β is 1) [code]. Teacher terms are computed under ``no_grad``, as in
    RepDistiller.
    """
    if emb_s.shape[0] != emb_t.shape[0]:
        raise ValueError(f"batch sizes differ: {emb_s.shape[0]} vs {emb_t.shape[0]}")
    student = emb_s.reshape(emb_s.shape[0], -1)
    teacher = emb_t.reshape(emb_t.shape[0], -1)
    with torch.no_grad():
        t_d = _rkd_pdist(teacher)
        t_d = t_d / _positive_mean(t_d)
        t_angle = _rkd_angles(teacher)
    d = _rkd_pdist(student)
    d = d / _positive_mean(d)
    loss_d = F.smooth_l1_loss(d, t_d)
    loss_a = F.smooth_l1_loss(_rkd_angles(student), t_angle)
    return w_dist * loss_d + w_angle * loss_a


@float32_loss
def pkt_loss(emb_s: Tensor, emb_t: Tensor, eps: float = 1e-7) -> Tensor:
    r"""Probabilistic Knowledge Transfer (Passalis & Tefas 2018), RepDistiller ``PKT.cosine_similarity_loss``.

    Rows L2-normalised as ``x / (‖x‖ + eps)`` (NaNs set to 0), cosine similarities mapped to [0, 1] by
    ``(s + 1) / 2``, each row divided by its sum to give conditional probabilities, then
    ``L = mean(P_t · log((P_t + eps) / (P_s + eps)))`` over all B² entries [code]. Embeddings are flattened
    per sample (a no-op for RepDistiller's B×D ``feat[-1]``).
    """
    if emb_s.shape[0] != emb_t.shape[0]:
        raise ValueError(f"batch sizes differ: {emb_s.shape[0]} vs {emb_t.shape[0]}")

    def probabilities(e: Tensor) -> Tensor:
        e = e.reshape(e.shape[0], -1)
        e = e / (torch.sqrt(torch.sum(e**2, dim=1, keepdim=True)) + eps)
        e = torch.where(torch.isnan(e), torch.zeros_like(e), e)
        sim = (e @ e.transpose(0, 1) + 1.0) / 2.0
        return sim / torch.sum(sim, dim=1, keepdim=True)

    p_s, p_t = probabilities(emb_s), probabilities(emb_t)
    return torch.mean(p_t * torch.log((p_t + eps) / (p_s + eps)))
