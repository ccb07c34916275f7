"""The distillers of kdlib.losses: registry, configurations, teacher handling, weights, zero losses, one step.

Batch 2, 32×32 inputs on CPU. Models are built once per name (``_cached_model``) and deep-copied per test.
"""

from __future__ import annotations

import copy
import functools

import pandas as pd
import pytest
import torch
from torch import nn

from kdlib import results
from kdlib.distill import Distiller
from kdlib.losses import dkd
from kdlib.losses.baselines import ConvReg
from kdlib.losses.functional import cd_loss, factor_distance, gkd_loss, kd_loss
from kdlib.methods import (
    BASELINES,
    CHANNEL_METHODS,
    METHODS,
    available_methods,
    build_distiller,
    get_method,
    make_config,
    variant_string,
)
from kdlib.models import available as available_models
from kdlib.models import create_model

#: Every method, in the table's order (pinned by test_table_order).
METHOD_ORDER = available_methods()

# methods.md section 7: the standard RepDistiller CIFAR-100 pairs (teacher, student).
STANDARD_PAIRS = [
    ("wrn_40_2", "wrn_16_2"),
    ("wrn_40_2", "wrn_40_1"),
    ("resnet56", "resnet20"),
    ("resnet110", "resnet20"),
    ("resnet110", "resnet32"),
    ("resnet32x4", "resnet8x4"),
    ("vgg13", "vgg8"),
    ("vgg13", "MobileNetV2"),
    ("ResNet50", "MobileNetV2"),
    ("ResNet50", "vgg8"),
    ("resnet32x4", "ShuffleV1"),
    ("resnet32x4", "ShuffleV2"),
    ("wrn_40_2", "ShuffleV1"),
]
SLOW_TEACHERS = {"ResNet50", "resnet110", "resnet152_cifar"}

# Term names each method returns with its default configuration (CD: the same in every epoch; a term that EDT
# switches off is returned as 0).
DEFAULT_TERMS = {
    "ce": {"ce"},
    "kd": {"ce", "kd"},
    "dkd": {"ce", "tckd", "nckd"},
    "fitnet": {"ce", "fitnet"},
    "at": {"ce", "at"},
    "sp": {"ce", "sp"},
    "rkd": {"ce", "rkd"},
    "pkt": {"ce", "pkt"},
    "ickd": {"ce", "ickd"},
    "ccs": {"ce", "intra", "inter"},
    "cd": {"ce", "gkd", "cd"},
    "cwt": {"ce", "cwt"},
    "iekd": {"ce", "inherit", "explore"},
}
LATE_EPOCH = 100  # CD: past the 60-epoch warm-up of the 200-epoch schedule, so CE and GKD are on


# --------------------------------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=4)
def _cached_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name)


def model(name: str) -> nn.Module:
    return copy.deepcopy(_cached_model(name))


def batch(seed: int = 0, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 100, (n,), generator=g)


def build(method: str, teacher: str | None, student: str, **overrides) -> Distiller:
    torch.manual_seed(1)
    t = model(teacher) if teacher is not None and method != "ce" else None
    return build_distiller(method, model(student), t, overrides)


def set_identity(module: nn.Module) -> None:
    """1×1 convs to the identity (bias 0), BatchNorm to the identity in eval mode (unit stats, eps 0)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            assert m.kernel_size == (1, 1) and m.in_channels == m.out_channels and m.groups == 1
            with torch.no_grad():
                m.weight.copy_(torch.eye(m.out_channels).view_as(m.weight))
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
            m.eps = 0.0


def method_parts(d: Distiller) -> list[nn.Parameter]:
    """Trainable parameters that are neither the student's nor the teacher's (projectors, encoders)."""
    own = {id(p) for p in d.student.parameters()}
    return [p for p in d.trainable_parameters() if id(p) not in own]


# --------------------------------------------------------------------------------------------- registry
def test_table_order():
    """The table is in the study's order (the rows of its tables): the baselines, then the channel methods."""
    assert BASELINES == ("ce", "kd", "dkd", "fitnet", "at", "sp", "rkd", "pkt")
    assert CHANNEL_METHODS == ("ickd", "ccs", "cd", "cwt", "iekd")
    assert available_methods() == [*BASELINES, *CHANNEL_METHODS]
    assert all(cls.name == name for name, cls in METHODS.items())


def test_unknown_method_lists_all():
    with pytest.raises(ValueError, match="unknown method 'nope'") as info:
        get_method("nope")
    for name in METHOD_ORDER:
        assert name in str(info.value)


def test_default_weights_follow_methods_md():
    expected = {
        "fitnet": {"fitnet_weight": 100.0, "hint_layer": 2, "ce_weight": 1.0, "kd_weight": 0.0},
        "at": {"at_weight": 1000.0, "p": 2},
        "sp": {"sp_weight": 3000.0},
        "rkd": {"rkd_weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0},
        "pkt": {"pkt_weight": 30000.0},
        "ickd": {"ickd_weight": 2.5, "kd_weight": 0.0, "T": 4.0, "ce_weight": 1.0, "variant": "code",
                 "tap": "code"},
        "ccs": {"intra_weight": 10.0, "inter_weight": 10.0, "kd_weight": 0.0, "inter_variant": "channel"},
        "cd": {"cd_weight": 6.0, "gkd_weight": 0.1, "gkd_T": 1.0, "edt": "code", "teacher_bn": "eval"},
        "cwt": {"cwt_weight": 5e-3, "bn": False},
        "iekd": {"inh_weight": 1.0, "exp_weight": 1.0, "goal": "ce", "rec": "l1", "split": "natural",
                 "tap": "code"},
        "dkd": {"ce_weight": 1.0, "kd_weight": 0.0, "tckd_weight": 1.0, "nckd_weight": 8.0, "T": 4.0,
                "warmup": 20},
    }
    for method, fields in expected.items():
        config = make_config(method)
        for name, value in fields.items():
            assert getattr(config, name) == value, (method, name)
    assert make_config("ickd").grid == (1, 1)


def test_make_config_parses_strings():
    c = make_config("ickd", {"grid": "2x2", "ickd_weight": "5", "variant": "paper", "kd_weight": "1"})
    assert (c.grid, c.ickd_weight, c.variant, c.kd_weight) == ((2, 2), 5.0, "paper", 1.0)
    c = make_config("cd", {"edt": "paper", "teacher_bn": "train", "gkd_T": "2", "edt_dataset": "imagenet"})
    assert (c.edt, c.teacher_bn, c.gkd_T, c.edt_dataset) == ("paper", "train", 2.0, "imagenet")
    c = make_config("iekd", {"split": "random", "split_seed": "3", "rec": "l2"})
    assert (c.split, c.split_seed, c.rec) == ("random", 3, "l2")
    assert make_config("cwt", {"bn": "true"}).bn is True
    c = make_config("ccs", {"inter_variant": "sample", "taps": "all", "projector": "always", "eps": "1e-5"})
    assert (c.inter_variant, c.taps, c.projector, c.eps) == ("sample", "all", "always", 1e-5)


@pytest.mark.parametrize(
    "method, overrides",
    [
        ("ickd", {"variant": "cifar"}),
        ("ickd", {"grid": "0x1"}),
        ("ccs", {"inter_variant": "batch"}),
        ("ccs", {"taps": "first"}),
        ("ccs", {"projector": "never"}),
        ("cd", {"edt": "linear"}),
        ("cd", {"edt_dataset": "cifar10"}),
        ("cd", {"teacher_bn": "frozen"}),
        ("iekd", {"goal": "dml"}),
        ("iekd", {"rec": "l3"}),
        ("iekd", {"split": "half"}),
        ("cwt", {"bn": "maybe"}),
        ("cwt", {"cwt_weight": "-1"}),
        ("fitnet", {"hint": "2"}),
    ],
)
def test_bad_options_raise(method, overrides):
    with pytest.raises(ValueError):
        make_config(method, overrides)


def test_iekd_goal_kd_sets_weights():
    c = make_config("iekd", {"goal": "kd"})
    assert (c.ce_weight, c.kd_weight, c.T) == (pytest.approx(0.1), 0.9, 4.0)
    c = make_config("iekd", {"goal": "kd", "ce_weight": "0.5"})
    assert (c.ce_weight, c.kd_weight) == (0.5, 0.9)


# --------------------------------------------------------------------------------------------- one step
def _one_step(method: str, teacher_name: str, student_name: str, epoch: int = LATE_EPOCH) -> None:
    d = build(method, teacher_name, student_name)
    teacher = d.teacher
    x, y = batch()
    params = d.trainable_parameters()
    assert d.training and d.student.training
    if teacher is not None:
        assert not teacher.training, "distiller.train() must keep the teacher in eval mode"
        teacher_ids = {id(p) for p in teacher.parameters()}
        assert not teacher_ids & {id(p) for p in params}
        before = {k: v.clone() for k, v in teacher.state_dict().items()}

    if d.has_pretrain:  # IE-KD stage A: only the auto-encoder learns
        d.pretraining = True
        assert d.autoencoder.training
        losses = d.pretrain_loss(x)
        assert set(losses) == {"reconstruction"}
        loss = sum(losses.values())
        assert torch.isfinite(loss)
        opt_a = torch.optim.SGD(d.pretrain_parameters(), lr=0.01)
        loss.backward()
        assert all(p.grad is not None for p in d.autoencoder.parameters())
        assert {id(p) for p in d.pretrain_parameters()} == {id(p) for p in d.autoencoder.parameters()}
        assert all(p.grad is None for p in d.student.parameters())
        assert all(p.grad is None for p in teacher.parameters())
        opt_a.step()
        opt_a.zero_grad(set_to_none=True)
        d.pretraining = False
        assert not d.autoencoder.training
        assert not {id(p) for p in d.autoencoder.parameters()} & {id(p) for p in params}

    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    d.set_epoch(epoch)
    logits, losses = d(x, y)
    assert logits.shape == (2, 100)
    assert set(losses) == DEFAULT_TERMS[method]
    total = sum(losses.values())
    assert torch.isfinite(total), {k: v.item() for k, v in losses.items()}
    total.backward()
    missing = [n for n, p in d.named_parameters() if p.requires_grad and p.grad is None]
    if d.has_pretrain:
        assert all(n.startswith("autoencoder.") for n in missing), missing
    else:
        assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in params)
    opt.step()
    if teacher is not None:
        assert all(p.grad is None for p in teacher.parameters())
        after = teacher.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), "teacher changed"
        assert not teacher.training


def _matrix():
    cases = []
    for teacher, student in STANDARD_PAIRS:
        for method in METHOD_ORDER:
            marks = [pytest.mark.slow] if teacher in SLOW_TEACHERS else []
            cases.append(
                pytest.param(method, teacher, student, marks=marks, id=f"{teacher}-{student}-{method}")
            )
    marks = [pytest.mark.slow]
    cases.append(pytest.param("cd", "resnet152_cifar", "resnet50_cifar", marks=marks, id="cd-paper-pair-cd"))
    return cases


@pytest.mark.parametrize("method, teacher, student", _matrix())
def test_one_training_step(method, teacher, student):
    _one_step(method, teacher, student)


# --------------------------------------------------------------------------------------------- teacher mode
@pytest.mark.parametrize("method", METHOD_ORDER[1:])
def test_train_keeps_teacher_eval(method):
    d = build(method, "resnet20", "resnet8")
    d.train()
    assert d.student.training and not d.teacher.training
    d.eval()
    assert not d.student.training and not d.teacher.training
    d.train()
    assert not d.teacher.training


def test_cd_teacher_bn_train_quirk():
    d = build("cd", "resnet20", "resnet8", teacher_bn="train", edt="off")
    assert d.teacher.training
    bn = next(m for m in d.teacher.modules() if isinstance(m, nn.BatchNorm2d))
    stats = bn.running_mean.clone()
    weights = [p.clone() for p in d.teacher.parameters()]
    x, y = batch()
    _, losses = d(x, y)
    sum(losses.values()).backward()
    assert not torch.equal(bn.running_mean, stats)  # batch statistics: the teacher's running stats move
    assert all(p.grad is None for p in d.teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(weights, d.teacher.parameters(), strict=True))
    d.eval()
    assert not d.teacher.training


# --------------------------------------------------------------------------------------------- weights
WEIGHTED = [
    ("fitnet", "fitnet_weight", "fitnet"),
    ("at", "at_weight", "at"),
    ("sp", "sp_weight", "sp"),
    ("rkd", "rkd_weight", "rkd"),
    ("pkt", "pkt_weight", "pkt"),
    ("ickd", "ickd_weight", "ickd"),
    ("ickd", "kd_weight", "kd"),
    ("ccs", "intra_weight", "intra"),
    ("ccs", "inter_weight", "inter"),
    ("cd", "cd_weight", "cd"),
    ("cd", "gkd_weight", "gkd"),
    ("cd", "ce_weight", "ce"),
    ("cwt", "cwt_weight", "cwt"),
    ("iekd", "inh_weight", "inherit"),
    ("iekd", "exp_weight", "explore"),
    ("kd", "kd_weight", "kd"),
    ("dkd", "tckd_weight", "tckd"),
    ("dkd", "nckd_weight", "nckd"),
]


@pytest.mark.parametrize("method, field, term", WEIGHTED, ids=[f"{m}-{f}" for m, f, _ in WEIGHTED])
def test_terms_are_weighted(method, field, term):
    overrides = {"kd_weight": 1.0} if field == "kd_weight" and method != "kd" else {}
    d = build(method, "wrn_16_2", "resnet8", **overrides).eval()
    d.set_epoch(LATE_EPOCH)
    x, _ = batch(n=4)  # RKD is identically 0 for 2 samples
    with torch.no_grad():
        y = d.teacher(x).argmax(dim=1)  # teacher correct on every sample, so GKD is not 0
        _, first = d(x, y)
        setattr(d.config, field, 2 * getattr(d.config, field))
        _, second = d(x, y)
    assert first[term].abs() > 1e-6
    assert second[term].item() == pytest.approx(2 * first[term].item(), rel=1e-5)
    for other in set(first) - {term}:
        assert second[other].item() == pytest.approx(first[other].item(), rel=1e-6)
    if term == "explore":
        assert first[term] < 0  # the exploration term pushes away from the teacher's factor
    setattr(d.config, field, 0.0)
    with torch.no_grad():
        _, third = d(x, y)
    assert term not in third


# --------------------------------------------------------------------------------------------- zero losses
ZERO_CASES = [
    ("fitnet", {}, "fitnet", "regressor"),
    ("at", {}, "at", None),
    ("sp", {}, "sp", None),
    ("rkd", {}, "rkd", None),
    ("pkt", {}, "pkt", None),
    ("ickd", {}, "ickd", "embed"),
    ("ickd", {"variant": "paper"}, "ickd", "embed"),
    ("ickd", {"grid": (2, 2)}, "ickd", "embed"),
    ("ccs", {}, "intra", "projectors"),
    ("ccs", {"projector": "always", "taps": "all"}, "intra", "projectors"),
    ("ccs", {"projector": "always", "inter_variant": "sample"}, "inter", "projectors"),
    ("ccs", {"projector": "always"}, "inter", "projectors"),
    ("cd", {"edt": "off"}, "cd", "connectors"),
    ("cd", {"edt": "off"}, "gkd", "connectors"),
    ("cwt", {}, "cwt", "transform"),
    ("dkd", {}, "tckd", None),
    ("dkd", {}, "nckd", None),
]


def _zero_case_value(method, overrides, term, part, student_like_teacher: bool) -> float:
    torch.manual_seed(3)
    teacher = model("resnet20")  # post-ReLU features, so the ReLUs of CD's connector / CWT are identities
    student = copy.deepcopy(teacher) if student_like_teacher else create_model("resnet20")
    d = build_distiller(method, student, teacher, overrides)
    d.set_epoch(LATE_EPOCH)
    if part is not None:
        set_identity(getattr(d, part))
    d.eval()
    x, _ = batch(seed=5, n=4)  # RKD is identically 0 for 2 samples (one distance, no angle)
    with torch.no_grad():
        y = teacher(x).argmax(dim=1)  # GKD: every sample correct
        _, losses = d(x, y)
    return losses[term].item()


@pytest.mark.parametrize(
    "method, overrides, term, part", ZERO_CASES, ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(ZERO_CASES)]
)
def test_loss_zero_when_student_is_teacher(method, overrides, term, part):
    same = _zero_case_value(method, overrides, term, part, student_like_teacher=True)
    other = _zero_case_value(method, overrides, term, part, student_like_teacher=False)
    assert abs(other) > 1e-7, "control: a different student must give a non-zero loss"
    assert abs(same) <= 1e-5 * abs(other) + 1e-9


# --------------------------------------------------------------------------------------------- CD
def _cd_manual(d: Distiller, x: torch.Tensor) -> float:
    with torch.no_grad():
        _, feats_s = d.student(x, with_features=True)
        _, feats_t = d.teacher(x, with_features=True)
        stages_s, stages_t = d.paired_stages(feats_s, feats_t)
        return cd_loss([c(f) for c, f in zip(d.connectors, stages_s, strict=True)], stages_t).item()


@pytest.mark.parametrize(
    "overrides, epoch, total_epochs, terms, factor",
    [
        ({}, 1, None, {"cd"}, 6.0),
        ({}, 60, None, {"cd"}, 6.0 * 0.9),
        ({}, 61, None, {"ce", "gkd", "cd"}, 6.0 * 0.9),
        ({}, 100, None, {"ce", "gkd", "cd"}, 6.0 * 0.9),
        ({}, 160, None, {"ce", "gkd", "cd"}, 6.0 * 0.81),
        ({}, 72, 240, {"cd"}, 6.0 * 0.9),  # boundaries scaled to a 240-epoch schedule: warm-up to 72
        ({}, 73, 240, {"ce", "gkd", "cd"}, 6.0 * 0.9),
        ({"edt": "paper"}, 1, None, {"ce", "gkd", "cd"}, 6.0),
        ({"edt": "paper"}, 200, None, {"ce", "gkd", "cd"}, 6.0 * 0.81),
        ({"edt": "off"}, 200, None, {"ce", "gkd", "cd"}, 6.0),
        ({"edt": "off", "cd_weight": 3.0}, 1, None, {"ce", "gkd", "cd"}, 3.0),
        ({"cd_weight": 3.0}, 1, None, {"cd"}, 3.0),
        ({"edt": "paper", "edt_dataset": "imagenet"}, 31, None, {"ce", "gkd", "cd"}, 6.0 * 0.9),
        ({"edt_dataset": "imagenet"}, 30, None, {"cd"}, 6.0 * 0.9),
    ],
)
def test_cd_edt_weights_reach_terms(overrides, epoch, total_epochs, terms, factor):
    """``set_epoch``'s EDT weights reach the terms bit for bit as ``weight·w·loss`` (the formula of the former
    ``forward(x, y, epoch)``); ``terms`` are those switched on, the others are returned as exactly 0."""
    d = build("cd", "resnet20", "resnet8", **overrides).eval()
    d.total_epochs = total_epochs
    d.set_epoch(epoch)
    assert d.epoch == epoch
    x, _ = batch()
    cfg, w = d.config, d.edt_weights(epoch)
    with torch.no_grad():
        y = d.teacher(x).argmax(dim=1)  # the teacher right on every sample: GKD is not 0 when it is on
        _, losses = d(x, y)
        logits, feats_s = d.student(x, with_features=True)
        logits_t, feats_t = d.teacher(x, with_features=True)
        stages_s, stages_t = d.paired_stages(feats_s, feats_t)
        connected = [c(f) for c, f in zip(d.connectors, stages_s, strict=True)]
        expected = {
            "ce": cfg.ce_weight * w["ce"] * nn.functional.cross_entropy(logits, y),
            "gkd": cfg.gkd_weight * w["gkd"] * gkd_loss(logits, logits_t, y, T=cfg.gkd_T),
            "cd": cfg.cd_weight / 6 * w["cd"] * cd_loss(connected, stages_t),
        }
    assert set(losses) == set(expected)  # the same terms in every epoch (one compiled graph)
    for name, value in expected.items():
        assert torch.equal(losses[name], value), (name, losses[name], value)
    assert {name for name, value in losses.items() if value != 0} == terms
    assert losses["cd"].item() == pytest.approx(factor * _cd_manual(d, x), rel=1e-5)


def test_cd_epoch_buffer_is_not_saved():
    """The EDT buffer is not in the state dict: checkpoints keep their keys and load strictly either way."""
    d = build("cd", "resnet20", "resnet8")
    d.total_epochs = 240
    d.set_epoch(240)
    state = d.state_dict()
    assert "edt_multipliers" not in state and not any("edt" in key for key in state)
    fresh = build("cd", "resnet20", "resnet8")
    fresh.load_state_dict(state, strict=True)
    assert fresh.edt_multipliers.tolist() == pytest.approx([0.0, 0.0, 6.0])  # a new distiller: epoch 1
    assert copy.deepcopy(d).edt_multipliers.tolist() == pytest.approx([1.0, 1.0, 6.0 * 0.81])


def test_set_epoch_checks_and_stores_the_epoch():
    d = build("kd", "resnet20", "resnet8")
    assert d.epoch == 1
    d.set_epoch(3)
    assert d.epoch == 3
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="epoch must be an integer >= 1"):
            d.set_epoch(bad)


def test_cd_gkd_zero_when_teacher_wrong():
    d = build("cd", "resnet20", "resnet8", edt="paper").eval()
    x, _ = batch()
    with torch.no_grad():
        y = (d.teacher(x).argmax(dim=1) + 1) % 100
    _, losses = d(x, y)
    assert losses["gkd"].item() == 0.0
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in d.student.parameters() if p.grad is not None)


def test_cd_pairs_last_stages_when_counts_differ():
    d = build("cd", "vgg8", "resnet8")  # teacher 4 stages, student 3: the teacher's last 3 are used
    assert [c[0].out_channels for c in d.connectors] == [256, 512, 512]
    assert [c[0].in_channels for c in d.connectors] == [16, 32, 64]
    x, y = batch()
    d.set_epoch(LATE_EPOCH)
    _, losses = d(x, y)
    assert torch.isfinite(sum(losses.values()))


def test_connector_every_stage_even_when_channels_match():
    d = build("cd", "resnet20", "resnet8")
    assert len(d.connectors) == 3
    assert all(isinstance(c[2], nn.ReLU) and c[0].bias is None for c in d.connectors)


# --------------------------------------------------------------------------------------------- IE-KD
def test_iekd_random_split_is_seeded_permutation():
    natural = build("iekd", "resnet20", "resnet8")
    assert torch.equal(natural.split_index, torch.arange(64))
    first = build("iekd", "resnet20", "resnet8", split="random")
    again = build("iekd", "resnet20", "resnet8", split="random", split_seed=0)
    other = build("iekd", "resnet20", "resnet8", split="random", split_seed=1)
    assert torch.equal(first.split_index, again.split_index)
    assert not torch.equal(first.split_index, natural.split_index)
    assert not torch.equal(first.split_index, other.split_index)
    assert torch.equal(first.split_index.sort().values, torch.arange(64))
    assert "split_index" in first.state_dict()


@pytest.mark.parametrize("split", ["natural", "random"])
def test_iekd_terms_use_the_split(split):
    d = build("iekd", "resnet20", "resnet8", split=split).eval()
    x, y = batch()
    with torch.no_grad():
        _, losses = d(x, y)
        _, feats_s = d.student(x, with_features=True)
        _, feats_t = d.teacher(x, with_features=True)
        factor_t = d.autoencoder.encoder(feats_t[-2])
        idx = d.split_index
        inherit = factor_distance(factor_t, d.inherit_encoder(feats_s[-2][:, idx[:32]]))
        explore = factor_distance(factor_t, d.explore_encoder(feats_s[-2][:, idx[32:]]))
    assert losses["inherit"].item() == pytest.approx(inherit.item(), rel=1e-6)  # λ = 1 [code]
    assert losses["explore"].item() == pytest.approx(-explore.item(), rel=1e-6)


@pytest.mark.parametrize("rec", ["l1", "l2"])
def test_iekd_reconstruction(rec):
    d = build("iekd", "resnet20", "resnet8", rec=rec)
    d.pretraining = True
    d.eval()  # deterministic BN for the comparison
    assert not d.autoencoder.training
    x, _ = batch()
    with torch.no_grad():
        loss = d.pretrain_loss(x)["reconstruction"].item()
        _, feats_t = d.teacher(x, with_features=True)
        diff = d.autoencoder(feats_t[-2]) - feats_t[-2]
    expected = diff.abs().mean() if rec == "l1" else diff.pow(2).mean()
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    d.train()
    assert d.autoencoder.training
    d.pretraining = False
    assert not d.autoencoder.training and d.student.training


def test_iekd_goal_kd_terms():
    d = build("iekd", "resnet20", "resnet8", goal="kd")
    x, y = batch()
    _, losses = d(x, y)
    assert set(losses) == {"ce", "kd", "inherit", "explore"}


def test_iekd_coder_layout():
    from kdlib.losses.iekd import Coder

    coder = Coder(8, 4)
    kinds = [type(m).__name__ for m in coder]
    assert kinds == ["LeakyReLU"] + ["Conv2d", "BatchNorm2d", "LeakyReLU"] * 3
    convs = [m for m in coder if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(8, 8), (8, 4), (4, 4)]
    assert all(c.bias is None and c.kernel_size == (3, 3) for c in convs)
    assert all(m.negative_slope == 0.1 and not m.inplace for m in coder if isinstance(m, nn.LeakyReLU))
    x = torch.randn(2, 8, 5, 5)
    assert coder(x).shape == (2, 4, 5, 5)


# --------------------------------------------------------------------------------------------- FitNet, CWT
@pytest.mark.parametrize(
    "s_shape, t_shape, kind",
    [
        ((8, 16, 16), (4, 8, 8), nn.Conv2d),
        ((8, 8, 8), (4, 16, 16), nn.ConvTranspose2d),
        ((8, 10, 10), (4, 8, 8), nn.Conv2d),
        ((8, 8, 8), (4, 8, 8), nn.Conv2d),
    ],
)
def test_convreg_cases(s_shape, t_shape, kind):
    reg = ConvReg(s_shape, t_shape)
    assert type(reg.conv) is kind
    assert reg(torch.randn(2, *s_shape)).shape == (2, *t_shape)


def test_convreg_rejects_unreconcilable_sizes():
    with pytest.raises(ValueError):
        ConvReg((8, 4, 4), (4, 16, 16))


class _TinyNet(nn.Module):
    """A 3-stage conv net with the zoo's interface; ``strides`` set the stage resolutions."""

    def __init__(self, strides: tuple[int, int, int], width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        chans = [width, width, 2 * width, 4 * width]
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(chans[i], chans[i + 1], 3, stride=s, padding=1),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(),
            )
            for i, s in enumerate(strides)
        )
        self.fc = nn.Linear(chans[-1], 100)

    def forward(self, x, with_features=False, preact=False):
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        feats.append(feats[-1].mean(dim=(2, 3)))
        logits = self.fc(feats[-1])
        return (logits, feats) if with_features else logits


def test_fitnet_pools_where_convreg_cannot():
    torch.manual_seed(0)
    d = build_distiller(
        "fitnet", _TinyNet((4, 2, 1)), _TinyNet((1, 1, 2))
    )  # hint: student 4×4, teacher 32×32
    assert d.pooled
    x, y = batch()
    _, losses = d(x, y)
    assert set(losses) == {"ce", "fitnet"} and torch.isfinite(losses["fitnet"])
    assert not build("fitnet", "resnet20", "resnet8").pooled


def test_cwt_pooled_flag_and_bn():
    assert build("cwt", "wrn_40_2", "ShuffleV1").pooled  # 8×8 teacher vs 4×4 student
    d = build("cwt", "resnet20", "resnet8", bn=True)
    assert not d.pooled
    kinds = [type(m).__name__ for m in d.transform]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d"]
    assert d.transform[0].bias is None and d.transform[0].out_channels == 64


# --------------------------------------------------------------------------------------------- variants
@pytest.mark.parametrize(
    "method, overrides",
    [
        ("ickd", {"variant": "paper", "grid": (2, 2), "kd_weight": 1.0}),
        ("ickd", {"variant": "imagenet"}),
        ("ccs", {"taps": "all", "projector": "always", "inter_variant": "sample"}),
        ("cd", {"teacher_bn": "train", "edt": "paper", "kd_weight": 0.5}),
        ("cwt", {"bn": True}),
        ("iekd", {"split": "random", "rec": "l2", "goal": "kd"}),
        ("at", {}),
    ],
)
def test_variants_one_step_on_mismatched_pair(method, overrides):
    d = build(method, "vgg8", "resnet8", **overrides)  # 4 vs 3 stages, 512 vs 64 channels, 4×4 vs 8×8
    x, y = batch()
    if d.has_pretrain:
        d.pretraining = True
        sum(d.pretrain_loss(x).values()).backward()
        d.pretraining = False
    _, losses = d(x, y)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in method_parts(d))


# --------------------------------------------------------------------------------------------- DKD
def _dkd_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    s = torch.randn(4, 6, generator=g, dtype=torch.float64) * 3
    t = torch.randn(4, 6, generator=g, dtype=torch.float64) * 3
    return s, t, torch.tensor([0, 3, 5, 2])


# mdistiller's dkd_loss (mdistiller/distillers/DKD.py @ a08d46f) run in float64 on _dkd_inputs(): it returns
# α·TCKD + β·NCKD, so the golden values are sums (both parts: β = 0 and α = 0 pin each alone).
DKD_GOLDEN = [
    ((1.0, 8.0, 4.0), 67.52889508714767),  # CIFAR-100 defaults
    ((1.0, 0.5, 1.0), 3.374089553034541),  # mdistiller's ImageNet config
    ((2.0, 0.0, 2.0), 3.861204215983546),  # TCKD alone
    ((0.0, 6.0, 4.0), 49.06376930335004),  # NCKD alone
]


@pytest.mark.parametrize("weights, expected", DKD_GOLDEN)
def test_dkd_loss_matches_mdistiller_in_float64(weights, expected):
    tckd, nckd = dkd.dkd_loss(*_dkd_inputs(), *weights)
    assert tckd.dtype == torch.float64
    assert (tckd + nckd).item() == pytest.approx(expected, rel=1e-12)


def test_dkd_parts_add_up_to_kd():
    """DKD's decomposition [paper, eq. 1]: KD = TCKD + (1 − p_target^t)·NCKD, here per sample (batch of 1)."""
    s, t, y = _dkd_inputs()
    T = 4.0
    for i in range(len(y)):
        tckd, nckd = dkd.dkd_loss(s[i:i + 1], t[i:i + 1], y[i:i + 1], 1.0, 1.0, T)
        p_target = torch.softmax(t[i] / T, dim=0)[y[i]]
        kd = kd_loss(s[i:i + 1], t[i:i + 1], T).item()
        assert (tckd + (1 - p_target) * nckd).item() == pytest.approx(kd, rel=1e-9)


def test_dkd_warmup_scales_both_terms_per_epoch():
    d = build("dkd", "wrn_16_2", "resnet8").eval()
    x, y = batch(n=4)
    factors = {}
    for epoch in (1, 10, 20, 21, 240):
        d.set_epoch(epoch)
        with torch.no_grad():
            _, losses = d(x, y)
        factors[epoch] = (losses["tckd"].item(), losses["nckd"].item())
    full_tckd, full_nckd = factors[20]
    for epoch, (tckd, nckd) in factors.items():
        w = min(epoch / 20, 1.0)
        assert (tckd, nckd) == pytest.approx((w * full_tckd, w * full_nckd), rel=1e-6)
    assert "warmup_factor" not in d.state_dict()  # a function of epoch and configuration, never saved
    with pytest.raises(ValueError, match="warmup must be an integer >= 1"):
        make_config("dkd", {"warmup": "0"})


def test_dkd_beta_per_pair_follows_mdistiller_configs():
    assert dkd.mdistiller_beta("resnet56", "resnet20") == 2.0
    assert dkd.mdistiller_beta("wrn_40_2", "wrn_16_2") == 6.0
    assert dkd.mdistiller_beta("resnet32x4", "resnet8x4") == 8.0  # no β in its config: CFG.DKD.BETA
    assert all(t in available_models() and s in available_models() for t, s in dkd.MDISTILLER_CIFAR100_BETA)


@pytest.mark.parametrize("teacher, student, beta", [
    ("resnet56", "resnet20", 2.0), ("wrn_40_2", "wrn_16_2", 6.0), ("resnet32x4", "resnet8x4", 8.0)])
def test_dkd_named_beta_takes_each_pairs_value(teacher: str, student: str, beta: float) -> None:
    """``nckd_weight="mdistiller"`` is one variant for every pair; for a pair it becomes mdistiller's β, the
    configuration that ``nckd_weight=<β>`` makes (what the run trains with and its record holds)."""
    named = make_config("dkd", {"nckd_weight": "mdistiller"})
    assert variant_string(named) == "nckd_weight=mdistiller"
    resolved = named.for_pair(teacher, student)
    assert resolved.nckd_weight == beta and resolved == make_config("dkd", {"nckd_weight": beta})
    assert resolved.for_pair("resnet110", "resnet32") == resolved  # a number stays the number


def test_dkd_named_beta_is_refused_where_it_names_nothing() -> None:
    with pytest.raises(ValueError, match="invalid nckd_weight 'mdistiller_imagenet'; a number or one of: "
                                         "mdistiller$"):
        make_config("dkd", {"nckd_weight": "mdistiller_imagenet"})
    with pytest.raises(ValueError, match="invalid value 'mdistiller' for tckd_weight"):  # β only
        make_config("dkd", {"tckd_weight": "mdistiller"})
    named = make_config("dkd", {"nckd_weight": "mdistiller"})
    with pytest.raises(ValueError, match=r"nckd_weight 'mdistiller' is set per teacher → student pair: "
                                         r"name the teacher's architecture \(--teacher\)"):
        named.for_pair(None, "resnet20")
    with pytest.raises(ValueError, match="does not apply to the ImageNet model 'resnet34'"):
        named.for_pair("resnet34", "resnet18")
    with pytest.raises(ValueError, match="nckd_weight=mdistiller names a rule set per teacher → student"):
        build("dkd", "resnet8", "resnet8", nckd_weight="mdistiller")  # never trains with a name for a weight
    assert make_config("dkd", {"nckd_weight": "2"}).nckd_weight == 2.0  # numbers read as before


def test_dkd_named_beta_lands_on_the_rows_mdistiller_reports() -> None:
    """Each CIFAR-100 DKD number mdistiller reports is mapped (``method_map.json``) to the variant that the
    record of an ``nckd_weight=mdistiller`` run of its pair carries (its β as a number), so the
    reported-vs-measured tables put the two side by side."""
    reported = pd.read_csv(results.REPORTED_CSV, dtype=str, keep_default_na=False, na_values=[""])
    mapped = results.map_reported(reported, results.load_method_map())
    rows = mapped[(mapped["paper"] == "mdistiller (DKD)") & (mapped["dataset"] == "CIFAR-100")
                  & (mapped["method_id"] == "dkd")]
    named = make_config("dkd", {"nckd_weight": "mdistiller"})
    assert len(rows) == 11 and {"nckd_weight=2.0", "nckd_weight=6.0", "default"} == set(rows["variant"])
    for row in rows.itertuples():
        assert variant_string(named.for_pair(row.teacher_id, row.student_id)) == row.variant, row.method
