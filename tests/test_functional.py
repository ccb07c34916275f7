"""Golden and invariant tests for :mod:`kdlib.losses.functional`.

Every function is compared with a separate, deliberately naive re-implementation below (explicit loops in
float64 NumPy that follow the formulas of ``reference/methods.md`` literally), plus a few pinned literals.
The tests never read ``../shared``: the formulas are restated here.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlib.losses import functional as KF

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def relu_randn(*shape: int, seed: int) -> torch.Tensor:
    return randn(*shape, seed=seed).clamp(min=0)


def np64(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float64).numpy()


# ============================================================================ naive references
def ref_log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max()
    return z - m - math.log(sum(math.exp(v - m) for v in z))


def ref_kd(zs, zt, T):
    zs, zt = np64(zs), np64(zt)
    total = 0.0
    for b in range(zs.shape[0]):
        ls, lt = ref_log_softmax(zs[b] / T), ref_log_softmax(zt[b] / T)
        total += sum(math.exp(lt[k]) * (lt[k] - ls[k]) for k in range(zs.shape[1]))
    return T * T * total / zs.shape[0]


def ref_bounds(size, cells):
    return [(math.floor(i * size / cells), math.ceil((i + 1) * size / cells)) for i in range(cells)]


def ref_gram(f, normalize):  # f: C×H×W numpy
    c = f.shape[0]
    flat = f.reshape(c, -1)
    g = np.zeros((c, c))
    for i in range(c):
        for j in range(c):
            g[i, j] = sum(flat[i, k] * flat[j, k] for k in range(flat.shape[1]))
    if normalize:
        for i in range(c):
            g[i] = g[i] / max(math.sqrt(sum(v * v for v in g[i])), 1e-12)
    return g


def ref_ickd(fs, ft, variant="code", grid=(1, 1)):
    fs, ft = np64(fs), np64(ft)
    b, c = ft.shape[:2]
    div = {"code": c * b, "paper": c * c * b, "imagenet": c * b * b}[variant]
    m, n = grid
    cell_losses = []
    for (hs0, hs1), (ht0, ht1) in zip(ref_bounds(fs.shape[2], m), ref_bounds(ft.shape[2], m), strict=True):
        for (ws0, ws1), (wt0, wt1) in zip(
            ref_bounds(fs.shape[3], n), ref_bounds(ft.shape[3], n), strict=True
        ):
            s = 0.0
            for i in range(b):
                gs = ref_gram(fs[i, :, hs0:hs1, ws0:ws1], variant != "paper")
                gt = ref_gram(ft[i, :, ht0:ht1, wt0:wt1], variant != "paper")
                s += float(((gs - gt) ** 2).sum())
            cell_losses.append(s / div)
    return sum(cell_losses) / len(cell_losses)


def ref_cd(feats_s, feats_t):
    total = 0.0
    for fs, ft in zip(feats_s, feats_t, strict=True):
        fs, ft = np64(fs), np64(ft)
        b, c = fs.shape[:2]
        acc = 0.0
        for i in range(b):
            for j in range(c):
                acc += (fs[i, j].mean() - ft[i, j].mean()) ** 2
        total += acc / (b * c)
    return total


def ref_gkd(zs, zt, y, T):
    zs, zt, y = np64(zs), np64(zt), y.numpy()
    total, k = 0.0, 0
    for b in range(zs.shape[0]):
        if int(np.argmax(zt[b])) != int(y[b]):
            continue
        k += 1
        ls, lt = ref_log_softmax(zs[b] / T), ref_log_softmax(zt[b] / T)
        total += sum(math.exp(lt[j]) * (lt[j] - ls[j]) for j in range(zs.shape[1]))
    return 0.0 if k == 0 else T * T * total / k


def ref_edt_table(epoch, dataset, variant="code"):
    """The official tables, restated."""
    if dataset == "imagenet":
        on = 0.0 if epoch <= 30 else 1.0
        cd = 6 * 0.9 ** (epoch // 30)
    else:
        on = 0.0 if epoch <= 60 else 1.0
        cd = 6 * 0.9 ** (0 if epoch < 60 else 1 if epoch < 160 else 2)
    if variant == "paper":
        on = 1.0
    return {"ce": on, "gkd": on, "cd": cd}


def ref_factor(x, y):
    x, y = np64(x), np64(y)
    b = x.shape[0]
    x, y = x.reshape(b, -1), y.reshape(b, -1)
    total = 0.0
    for i in range(b):
        xn = x[i] / max(math.sqrt((x[i] ** 2).sum()), 1e-12)
        yn = y[i] / max(math.sqrt((y[i] ** 2).sum()), 1e-12)
        total += sum(abs(xn[d] - yn[d]) for d in range(x.shape[1]))
    return total / x.size


def ref_pearson_rows(x, eps):  # x: C×N observations in columns
    c, n = x.shape
    means = [sum(x[i]) / n for i in range(c)]
    cov = np.zeros((c, c))
    for i in range(c):
        for j in range(c):
            cov[i, j] = sum((x[i, k] - means[i]) * (x[j, k] - means[j]) for k in range(n)) / n
    r = np.zeros((c, c))
    for i in range(c):
        for j in range(c):
            r[i, j] = cov[i, j] / math.sqrt(cov[i, i] * cov[j, j] + eps)
    return r


def ref_channel_pearson(f, eps):
    f = np64(f)
    return np.stack([ref_pearson_rows(f[b].reshape(f.shape[1], -1), eps) for b in range(f.shape[0])])


def ref_ccs_intra(fs, ft, eps):
    rs, rt = ref_channel_pearson(fs, eps), ref_channel_pearson(ft, eps)
    c = rs.shape[1]
    return float(np.mean([((rs[b] - rt[b]) ** 2).sum() / (c * c) for b in range(rs.shape[0])]))


def ref_ccs_inter_channel(fs, ft, eps):
    vs, vt = np64(fs).mean(axis=(2, 3)), np64(ft).mean(axis=(2, 3))
    rs, rt = ref_pearson_rows(vs.T, eps), ref_pearson_rows(vt.T, eps)
    c = rs.shape[0]
    return float(((rs - rt) ** 2).sum()) / (c * c)


def ref_ccs_inter_sample(fs, ft, eps):
    def sim(f):
        r = ref_channel_pearson(f, eps)
        b = r.shape[0]
        vecs = [r[i].ravel() / max(np.linalg.norm(r[i].ravel()), 1e-12) for i in range(b)]
        return np.array([[float(vecs[i] @ vecs[j]) for j in range(b)] for i in range(b)])

    ss, st = sim(fs), sim(ft)
    b = ss.shape[0]
    return float(((ss - st) ** 2).sum()) / (b * b)


def ref_block_pool(f, h, w):  # exact block average, f: B×C×H×W numpy, H % h == 0
    b, c, hh, ww = f.shape
    kh, kw = hh // h, ww // w
    out = np.zeros((b, c, h, w))
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = f[:, :, i * kh : (i + 1) * kh, j * kw : (j + 1) * kw].mean(axis=(2, 3))
    return out


def ref_at(feats_s, feats_t, p=2):
    total = 0.0
    for fs, ft in zip(feats_s, feats_t, strict=True):
        fs, ft = np64(fs), np64(ft)
        h, w = min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3])
        fs, ft = ref_block_pool(fs, h, w), ref_block_pool(ft, h, w)

        def at(f):
            a = (f**p).mean(axis=1).reshape(f.shape[0], -1)
            return np.stack([row / max(np.linalg.norm(row), 1e-12) for row in a])

        total += float(((at(fs) - at(ft)) ** 2).mean())
    return total


def ref_sp(fs, ft):
    fs, ft = np64(fs), np64(ft)
    b = fs.shape[0]

    def gram(f):
        flat = f.reshape(b, -1)
        g = np.array([[float(flat[i] @ flat[j]) for j in range(b)] for i in range(b)])
        return np.stack([row / max(np.linalg.norm(row), 1e-12) for row in g])

    return float(((gram(fs) - gram(ft)) ** 2).sum()) / (b * b)


def ref_smooth_l1(a, b):
    d = np.abs(a - b)
    return float(np.where(d < 1.0, 0.5 * d**2, d - 0.5).mean())


def ref_rkd(es, et, w_d=25.0, w_a=50.0):
    es, et = np64(es), np64(et)
    b = es.shape[0]
    es, et = es.reshape(b, -1), et.reshape(b, -1)

    def dist(e):
        d = np.zeros((b, b))
        for i in range(b):
            for j in range(b):
                if i != j:
                    d[i, j] = math.sqrt(max(((e[i] - e[j]) ** 2).sum(), 1e-12))
        return d / d[d > 0].mean()

    def angles(e):
        a = np.zeros((b, b, b))
        for v in range(b):  # vertex
            for i in range(b):
                for k in range(b):
                    u1, u2 = e[i] - e[v], e[k] - e[v]
                    u1 = u1 / max(np.linalg.norm(u1), 1e-12)
                    u2 = u2 / max(np.linalg.norm(u2), 1e-12)
                    a[v, i, k] = float(u1 @ u2)
        return a.ravel()

    return w_d * ref_smooth_l1(dist(es), dist(et)) + w_a * ref_smooth_l1(angles(es), angles(et))


def ref_pkt(es, et, eps=1e-7):
    def probs(e):
        e = np64(e)
        b = e.shape[0]
        e = e.reshape(b, -1)
        e = np.stack([row / (math.sqrt((row**2).sum()) + eps) for row in e])
        sim = np.array([[(float(e[i] @ e[j]) + 1.0) / 2.0 for j in range(b)] for i in range(b)])
        return np.stack([row / row.sum() for row in sim])

    ps, pt = probs(es), probs(et)
    return float(np.mean(pt * np.log((pt + eps) / (ps + eps))))


# ============================================================================ fixtures: pinned inputs
def maps(seed=0, b=3, c=4, h=4, w=4):
    return relu_randn(b, c, h, w, seed=seed)


# name -> (function applied to (student, teacher), make student, make teacher, reference)
CASES = {
    "kd": (
        lambda s, t: KF.kd_loss(s, t, 4.0),
        lambda: randn(4, 6, seed=1),
        lambda: randn(4, 6, seed=2),
        lambda s, t: ref_kd(s, t, 4.0),
    ),
    "ickd_code": (KF.ickd_loss, lambda: maps(3), lambda: maps(4), ref_ickd),
    "ickd_paper": (
        lambda s, t: KF.ickd_loss(s, t, "paper"),
        lambda: maps(3),
        lambda: maps(4),
        lambda s, t: ref_ickd(s, t, "paper"),
    ),
    "ickd_imagenet": (
        lambda s, t: KF.ickd_loss(s, t, "imagenet"),
        lambda: maps(3),
        lambda: maps(4),
        lambda s, t: ref_ickd(s, t, "imagenet"),
    ),
    "ickd_grid_2x3_mixed_hw": (
        lambda s, t: KF.ickd_loss(s, t, grid=(2, 3)),
        lambda: maps(5, h=5, w=7),
        lambda: maps(6, h=4, w=6),
        lambda s, t: ref_ickd(s, t, grid=(2, 3)),
    ),
    "cd": (
        lambda s, t: KF.cd_loss(s, t),
        lambda: [maps(7, c=2, h=4, w=4), maps(8, c=3, h=2, w=2)],
        lambda: [maps(9, c=2, h=4, w=4), maps(10, c=3, h=1, w=1)],
        ref_cd,
    ),
    "factor_distance": (
        KF.factor_distance,
        lambda: randn(3, 2, 3, 3, seed=11),
        lambda: randn(3, 2, 3, 3, seed=12),
        ref_factor,
    ),
    "ccs_intra": (
        KF.ccs_intra_loss,
        lambda: maps(13, h=3, w=5),
        lambda: maps(14, h=4, w=4),
        lambda s, t: ref_ccs_intra(s, t, 1e-6),
    ),
    "ccs_inter_channel": (
        KF.ccs_inter_loss,
        lambda: maps(15, b=5),
        lambda: maps(16, b=5),
        lambda s, t: ref_ccs_inter_channel(s, t, 1e-6),
    ),
    "ccs_inter_sample": (
        lambda s, t: KF.ccs_inter_loss(s, t, variant="sample"),
        lambda: maps(17),
        lambda: maps(18, h=2, w=2),
        lambda s, t: ref_ccs_inter_sample(s, t, 1e-6),
    ),
    "cwt": (
        KF.cwt_loss,
        lambda: randn(2, 3, 2, 2, seed=19),
        lambda: randn(2, 3, 2, 2, seed=20),
        lambda s, t: float(((np64(s) - np64(t)) ** 2).sum()) / 2,
    ),
    "fitnet": (
        KF.fitnet_loss,
        lambda: randn(2, 3, 2, 2, seed=21),
        lambda: randn(2, 3, 2, 2, seed=22),
        lambda s, t: float(((np64(s) - np64(t)) ** 2).mean()),
    ),
    "at": (
        lambda s, t: KF.at_loss(s, t),
        lambda: [maps(23, h=4, w=4), maps(24, h=2, w=2)],
        lambda: [maps(25, h=2, w=2), maps(26, h=2, w=2)],
        ref_at,
    ),
    "sp": (KF.sp_loss, lambda: maps(27, b=4), lambda: maps(28, b=4, c=6, h=2, w=2), ref_sp),
    "rkd": (KF.rkd_loss, lambda: randn(5, 4, seed=29), lambda: randn(5, 6, seed=30), ref_rkd),
    "pkt": (KF.pkt_loss, lambda: randn(5, 4, seed=31), lambda: randn(5, 6, seed=32), ref_pkt),
}


def gkd_inputs():
    zs, zt = randn(6, 5, seed=40), randn(6, 5, seed=41)
    y = zt.argmax(dim=1).clone()
    y[[1, 4]] = (y[[1, 4]] + 1) % 5  # two samples the teacher gets wrong
    return zs, zt, y


def _clone(x):
    return [t.clone() for t in x] if isinstance(x, list) else x.clone()


def _requires_grad(x):
    if isinstance(x, list):
        return [t.clone().requires_grad_(True) for t in x]
    return x.clone().requires_grad_(True)


def _grads(x):
    return [t.grad for t in x] if isinstance(x, list) else [x.grad]


def _to(x, dtype):
    return [t.to(dtype) for t in x] if isinstance(x, list) else x.to(dtype)


# ============================================================================ golden values
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_naive_reference(name):
    fn, make_s, make_t, ref = CASES[name]
    s, t = make_s(), make_t()
    out = fn(s, t)
    assert out.dim() == 0
    assert out.item() == pytest.approx(ref(s, t), rel=1e-9, abs=1e-12)


def test_gkd_matches_naive_reference():
    zs, zt, y = gkd_inputs()
    for T in (1.0, 3.0):
        assert KF.gkd_loss(zs, zt, y, T).item() == pytest.approx(ref_gkd(zs, zt, y, T), rel=1e-9)


def test_pinned_literals():
    """Outputs pinned once from the naive references above (float64)."""
    s, t = CASES["kd"][1](), CASES["kd"][2]()
    assert KF.kd_loss(s, t, 4.0).item() == pytest.approx(KD_LITERAL, rel=1e-6)
    assert KF.ickd_loss(maps(3), maps(4)).item() == pytest.approx(ICKD_LITERAL, rel=1e-6)
    zs, zt, y = gkd_inputs()
    assert KF.gkd_loss(zs, zt, y).item() == pytest.approx(GKD_LITERAL, rel=1e-6)
    assert KF.ccs_intra_loss(maps(13, h=3, w=5), maps(14)).item() == pytest.approx(
        CCS_INTRA_LITERAL, rel=1e-6
    )
    s, t = CASES["rkd"][1](), CASES["rkd"][2]()
    assert KF.rkd_loss(s, t).item() == pytest.approx(RKD_LITERAL, rel=1e-6)


KD_LITERAL = 0.537374457122
ICKD_LITERAL = 0.258037011841
GKD_LITERAL = 0.819612139198
CCS_INTRA_LITERAL = 0.130718698218
RKD_LITERAL = 4.07794430105


# ============================================================================ invariants
@pytest.mark.parametrize("name", sorted(CASES))
def test_zero_when_student_equals_teacher(name):
    fn, _, make_t, _ = CASES[name]
    t = make_t()
    assert fn(_clone(t), t).item() == pytest.approx(0.0, abs=1e-10)


def test_gkd_zero_when_student_equals_teacher():
    _, zt, y = gkd_inputs()
    assert KF.gkd_loss(zt.clone(), zt, y).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_reaches_student_and_inputs_unchanged(name):
    fn, make_s, make_t, _ = CASES[name]
    s, t = _requires_grad(make_s()), make_t()
    s_before, t_before = _clone(s), _clone(t)
    fn(s, t).backward()
    grads = _grads(s)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0
    for a, b in zip(_as_list(s) + _as_list(t), _as_list(s_before) + _as_list(t_before), strict=True):
        assert torch.equal(a.detach(), b.detach())


def _as_list(x):
    return x if isinstance(x, list) else [x]


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_and_float64_agree(name):
    fn, make_s, make_t, _ = CASES[name]
    s, t = make_s(), make_t()
    out64 = fn(s, t)
    out32 = fn(_to(s, torch.float32), _to(t, torch.float32))
    assert out64.dtype == torch.float64 and out32.dtype == torch.float32
    assert out32.item() == pytest.approx(out64.item(), rel=1e-4, abs=1e-6)


def test_rkd_teacher_gets_no_gradient():
    s, t = randn(5, 4, seed=1).requires_grad_(True), randn(5, 4, seed=2).requires_grad_(True)
    KF.rkd_loss(s, t).backward()
    assert t.grad is None and s.grad is not None


def test_bounded_terms():
    f = maps(50, b=4, c=5)
    opposite = -randn(4, 5, 4, 4, seed=51)  # mixed signs, so G rows can point in opposite directions
    g = KF.inter_channel_correlation(opposite)
    assert g.abs().max() <= 1 + 1e-12
    assert torch.linalg.vector_norm(g, dim=2).max() <= 1 + 1e-12
    assert KF.ickd_loss(f, opposite).item() <= 4
    assert KF.ickd_loss(f, -f, variant="code").item() <= 4
    r = KF.channel_pearson(opposite)
    assert r.shape == (4, 5, 5) and r.abs().max() <= 1
    rb = KF.batch_channel_pearson(opposite)
    assert rb.shape == (5, 5) and rb.abs().max() <= 1
    for loss in (
        KF.ccs_intra_loss(f, -f),
        KF.ccs_inter_loss(f, -f),
        KF.ccs_inter_loss(f, -f, variant="sample"),
    ):
        assert 0 <= loss.item() <= 4
    x = randn(3, 7, seed=52)
    assert 0 <= KF.factor_distance(x, -x).item() <= 2
    assert KF.factor_distance(x, -x).item() == pytest.approx(
        float(np.abs(2 * np64(x) / np.linalg.norm(np64(x), axis=1, keepdims=True)).mean())
    )


# ============================================================================ ICKD specifics
def test_ickd_grid_one_equals_default_and_variants_scale():
    s, t = maps(60, b=2, c=3), maps(61, b=2, c=3)
    assert KF.ickd_loss(s, t, grid=(1, 1)).item() == KF.ickd_loss(s, t).item()
    b, c = 2, 3
    assert KF.ickd_loss(s, t, "imagenet").item() == pytest.approx(
        KF.ickd_loss(s, t, "code").item() / b, rel=1e-12
    )
    gs = KF.inter_channel_correlation(s, normalize=False)
    gt = KF.inter_channel_correlation(t, normalize=False)
    raw = ((gs - gt) ** 2).sum().item()
    assert KF.ickd_loss(s, t, "paper").item() == pytest.approx(raw / (c * c * b), rel=1e-12)
    gs_n, gt_n = KF.inter_channel_correlation(s), KF.inter_channel_correlation(t)
    assert KF.ickd_loss(s, t, "code").item() == pytest.approx(((gs_n - gt_n) ** 2).sum().item() / (c * b))


def test_ickd_different_spatial_sizes():
    s, t = maps(62, h=8, w=8), maps(63, h=4, w=4)
    out = KF.ickd_loss(s, t)
    assert torch.isfinite(out) and out.item() > 0


def test_ickd_grid_2x2_is_mean_of_quadrants():
    s, t = maps(64, h=4, w=6), maps(65, h=2, w=4)
    quads = []
    for i in range(2):
        for j in range(2):
            qs = s[:, :, 2 * i : 2 * i + 2, 3 * j : 3 * j + 3]
            qt = t[:, :, i : i + 1, 2 * j : 2 * j + 2]
            quads.append(KF.ickd_loss(qs, qt).item())
    assert KF.ickd_loss(s, t, grid=(2, 2)).item() == pytest.approx(sum(quads) / 4, rel=1e-12)


def test_grid_bounds_match_adaptive_pooling():
    assert KF.grid_cell_bounds(4, 2) == [(0, 2), (2, 4)]
    assert KF.grid_cell_bounds(5, 2) == [(0, 3), (2, 5)]
    assert KF.grid_cell_bounds(7, 3) == ref_bounds(7, 3)
    # the cells' means are exactly adaptive_avg_pool2d's outputs
    f = randn(1, 1, 7, 5, seed=66)
    pooled = torch.nn.functional.adaptive_avg_pool2d(f, (3, 2))
    for i, (h0, h1) in enumerate(KF.grid_cell_bounds(7, 3)):
        for j, (w0, w1) in enumerate(KF.grid_cell_bounds(5, 2)):
            assert f[0, 0, h0:h1, w0:w1].mean().item() == pytest.approx(pooled[0, 0, i, j].item(), rel=1e-12)


def test_ickd_errors():
    s = maps(67)
    with pytest.raises(ValueError, match="'code', 'paper', 'imagenet'"):
        KF.ickd_loss(s, s, variant="cifar")
    with pytest.raises(ValueError, match="channels"):
        KF.ickd_loss(s, maps(68, c=5))
    with pytest.raises(ValueError, match=">= 1"):
        KF.ickd_loss(s, s, grid=(0, 1))


# ============================================================================ CD / GKD / EDT
def test_cd_errors_and_single_tensor():
    s, t = maps(70), maps(71)
    assert KF.cd_loss(s, t).item() == pytest.approx(ref_cd([s], [t]), rel=1e-12)
    with pytest.raises(ValueError, match="length"):
        KF.cd_loss([s, s], [t])
    with pytest.raises(ValueError, match="empty"):
        KF.cd_loss([], [])


def test_gkd_no_correct_sample_is_zero_with_finite_grad():
    zs = randn(4, 5, seed=72).requires_grad_(True)
    zt = randn(4, 5, seed=73)
    y = (zt.argmax(dim=1) + 1) % 5
    out = KF.gkd_loss(zs, zt, y)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert zs.grad is not None and torch.isfinite(zs.grad).all() and zs.grad.abs().sum() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gkd_teacher_probability_underflow_is_finite(dtype):
    zt = torch.tensor([[1e4, 0.0, -1e4], [0.0, 2e4, 1.0]], dtype=dtype)
    zs = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, -0.5]], dtype=dtype, requires_grad=True)
    y = torch.tensor([0, 1])
    out = KF.gkd_loss(zs, zt, y)
    assert torch.isfinite(out)
    out.backward()
    assert torch.isfinite(zs.grad).all()
    # p_t is one-hot up to underflow: KL = -log p_s(label), averaged over the two correct rows
    expected = -(torch.log_softmax(zs.detach().double(), 1)[[0, 1], [0, 1]]).mean().item()
    assert out.item() == pytest.approx(expected, rel=1e-5)


def test_gkd_uses_only_correct_rows():
    zs, zt, y = gkd_inputs()
    keep = zt.argmax(1) == y
    assert keep.sum() == 4
    manual = KF.kd_loss(zs[keep], zt[keep], 2.0)  # KD over the correct rows = GKD
    assert KF.gkd_loss(zs, zt, y, 2.0).item() == pytest.approx(manual.item(), rel=1e-12)


@pytest.mark.parametrize(("dataset", "n"), [("cifar100", 200), ("imagenet", 100)])
@pytest.mark.parametrize("variant", ["code", "paper"])
def test_edt_reproduces_official_tables(dataset, n, variant):
    for e in range(1, n + 1):
        got = KF.edt_weights(e, dataset, variant)
        assert got == pytest.approx(ref_edt_table(e, dataset, variant)), e
        assert got == pytest.approx(KF.edt_weights(e, dataset, variant, epochs=n)), e


def test_edt_spot_values():
    assert KF.edt_weights(1, "cifar100") == {"ce": 0.0, "gkd": 0.0, "cd": 6.0}
    assert KF.edt_weights(60, "cifar100") == pytest.approx({"ce": 0.0, "gkd": 0.0, "cd": 5.4})
    assert KF.edt_weights(61, "cifar100") == pytest.approx({"ce": 1.0, "gkd": 1.0, "cd": 5.4})
    assert KF.edt_weights(160, "cifar100")["cd"] == pytest.approx(6 * 0.81)
    assert KF.edt_weights(30, "imagenet") == pytest.approx({"ce": 0.0, "gkd": 0.0, "cd": 5.4})
    assert KF.edt_weights(31, "imagenet")["ce"] == 1.0
    assert KF.edt_weights(90, "imagenet")["cd"] == pytest.approx(6 * 0.9**3)
    assert KF.edt_weights(1, "imagenet", "paper") == {"ce": 1.0, "gkd": 1.0, "cd": 6.0}


def test_edt_scaled_schedules():
    # CIFAR on 240 epochs: boundaries 60 -> 72, 160 -> 192
    for e in range(1, 241):
        on = 0.0 if e <= 72 else 1.0
        k = 0 if e < 72 else 1 if e < 192 else 2
        assert KF.edt_weights(e, "cifar100", epochs=240) == pytest.approx(
            {"ce": on, "gkd": on, "cd": 6 * 0.9**k}
        )
    # ImageNet on a 20-epoch proxy: boundary 30 -> 6, decay every 6 epochs
    for e in range(1, 21):
        on = 0.0 if e <= 6 else 1.0
        assert KF.edt_weights(e, "imagenet", epochs=20) == pytest.approx(
            {"ce": on, "gkd": on, "cd": 6 * 0.9 ** (e // 6)}
        )
    # CIFAR on 20 epochs: 60 -> 6, 160 -> 16
    assert [KF.edt_weights(e, "cifar100", epochs=20)["cd"] for e in (5, 6, 15, 16)] == pytest.approx(
        [6.0, 5.4, 5.4, 4.86]
    )
    # non-integer scaled boundary (30 * 25 / 100 = 7.5) takes effect at the first epoch past it
    assert KF.edt_weights(7, "imagenet", epochs=25) == pytest.approx({"ce": 0.0, "gkd": 0.0, "cd": 6.0})
    assert KF.edt_weights(8, "imagenet", epochs=25) == pytest.approx({"ce": 1.0, "gkd": 1.0, "cd": 5.4})


def test_edt_errors():
    with pytest.raises(ValueError, match="'cifar100', 'imagenet'"):
        KF.edt_weights(1, "cifar10")
    with pytest.raises(ValueError, match="'code', 'paper'"):
        KF.edt_weights(1, "cifar100", variant="official")
    with pytest.raises(ValueError, match="1-indexed"):
        KF.edt_weights(0, "cifar100")
    with pytest.raises(ValueError, match="epochs"):
        KF.edt_weights(1, "cifar100", epochs=0)


# ============================================================================ CCS
def test_pearson_matches_numpy_corrcoef_without_eps():
    f = randn(2, 3, 4, 5, seed=80)
    r = KF.channel_pearson(f, eps=0.0)
    for b in range(2):
        np.testing.assert_allclose(
            r[b].numpy(), np.corrcoef(np64(f[b]).reshape(3, -1)), rtol=1e-10, atol=1e-12
        )
    v = randn(6, 3, seed=81)
    np.testing.assert_allclose(
        KF.batch_channel_pearson(v, eps=0.0).numpy(), np.corrcoef(np64(v).T), rtol=1e-10
    )
    np.testing.assert_allclose(
        KF.batch_channel_pearson(f, 1e-6).numpy(),
        ref_pearson_rows(np64(f).mean(axis=(2, 3)).T, 1e-6),
        rtol=1e-10,
    )


@pytest.mark.parametrize(
    "loss",
    [KF.ccs_intra_loss, KF.ccs_inter_loss, lambda s, t: KF.ccs_inter_loss(s, t, variant="sample")],
    ids=["intra", "inter_channel", "inter_sample"],
)
def test_ccs_dead_channel_is_finite(loss):
    s, t = maps(82, b=4), maps(83, b=4)
    s[:, 1] = 0.0
    t[:, 2] = 0.0
    s.requires_grad_(True)
    out = loss(s, t)
    assert torch.isfinite(out)
    out.backward()
    assert torch.isfinite(s.grad).all()
    r = KF.channel_pearson(t)
    assert torch.isfinite(r).all() and (r[:, 2] == 0).all() and (r[:, :, 2] == 0).all()


def test_ccs_inter_variants_and_errors():
    s, t = maps(84, b=4), maps(85, b=4)
    a = KF.ccs_inter_loss(s, t, variant="channel").item()
    b = KF.ccs_inter_loss(s, t, variant="sample").item()
    assert a != b
    assert KF.ccs_inter_loss(s.mean(dim=(2, 3)), t.mean(dim=(2, 3))).item() == pytest.approx(a, rel=1e-12)
    with pytest.raises(ValueError, match="'channel', 'sample'"):
        KF.ccs_inter_loss(s, t, variant="batch")
    with pytest.raises(ValueError, match="channels"):
        KF.ccs_intra_loss(s, maps(86, b=4, c=5))


# ============================================================================ baselines and helpers
def test_pool_to_match():
    s, t = maps(90, h=8, w=8), maps(91, h=4, w=4)
    ps, pt = KF.pool_to_match(s, t)
    assert ps.shape == pt.shape == (3, 4, 4, 4)
    assert pt is t
    np.testing.assert_allclose(ps.numpy(), ref_block_pool(np64(s), 4, 4), rtol=1e-12)
    ps2, pt2 = KF.pool_to_match(t, s)
    assert ps2 is t and pt2.shape == (3, 4, 4, 4)


def test_point_wise_losses_require_same_shape():
    with pytest.raises(ValueError, match="pool_to_match"):
        KF.cwt_loss(maps(92, h=4), maps(93, h=2, w=2))
    with pytest.raises(ValueError, match="pool_to_match"):
        KF.fitnet_loss(maps(92, h=4), maps(93, h=2, w=2))


def test_at_matches_repdistiller_square_pooling_and_length_check():
    s, t = maps(94, h=8, w=8), maps(95, h=4, w=4)
    f = torch.nn.functional
    ps = f.adaptive_avg_pool2d(s, (4, 4))  # RepDistiller: pool the larger to (t_H, t_H)
    expected = (
        (f.normalize(ps.pow(2).mean(1).view(3, -1)) - f.normalize(t.pow(2).mean(1).view(3, -1))).pow(2).mean()
    )
    assert KF.at_loss([s], [t]).item() == pytest.approx(expected.item(), rel=1e-12)
    with pytest.raises(ValueError, match="length"):
        KF.at_loss([s, s], [t])


def test_ruff_clean():
    ruff = Path(sys.executable).with_name("ruff")
    exe = str(ruff) if ruff.exists() else shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff not installed")
    files = [str(ROOT / "kdlib" / "losses" / "functional.py"), str(Path(__file__).resolve())]
    result = subprocess.run([exe, "check", *files], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
