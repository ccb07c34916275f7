"""ICKD's and IE-KD's tap: the last map before global pooling as the official code's models return it.

``model(x, prepool=True)`` gives that map; RepDistiller's feature list is unchanged (tests/test_models.py).
The two taps differ on WRN (post- vs pre-BN-ReLU), MobileNetV2 (1280 vs 160 channels) and ShuffleV2 (1024
vs 464), and agree elsewhere, which keeps the ``config_id`` of runs made before the option.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from kdlib import record as run_record
from kdlib.distill import taps_agree
from kdlib.losses.functional import factor_distance, ickd_loss
from kdlib.methods import build_distiller
from kdlib.models import available, create_model, model_spec
from kdlib.results import record_variant

REPO = Path(__file__).resolve().parents[1]
PROXY = REPO / "data/results/proxy/fashion_mnist/repdistiller/resnet32-resnet8"


def _x(size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", available())
def test_prepool_is_feats_minus_2_exactly_where_the_registry_says(name: str) -> None:
    model = create_model(name).eval()
    x = _x(64 if model_spec(name).num_classes == 1000 else 32)
    with torch.no_grad():
        logits, feats = model(x, with_features=True)
        logits_p, last = model(x, prepool=True)
    assert torch.equal(logits, logits_p)
    same = last.shape == feats[-2].shape and torch.equal(last, feats[-2])
    assert same == model_spec(name).prepool_in_features


@pytest.mark.parametrize("name, shape", [("wrn_16_2", (128, 8, 8)), ("MobileNetV2", (1280, 2, 2)),
                                         ("ShuffleV2", (1024, 4, 4))])
def test_official_tap_shapes_and_sign(name: str, shape: tuple[int, ...]) -> None:
    model = create_model(name).eval()
    with torch.no_grad():
        _, last = model(_x(), prepool=True)
        _, feats = model(_x(), with_features=True)
    assert tuple(last.shape[1:]) == shape and (last >= 0).all()  # post-ReLU, all three
    if name == "wrn_16_2":  # RepDistiller's feats[-2] is before the final BN and ReLU
        assert (feats[-2] < 0).any()
        assert torch.equal(last, torch.relu(model.bn1(feats[-2])))


@pytest.mark.parametrize("teacher, student, tap, c_s, c_t", [
    ("wrn_40_2", "wrn_16_2", "code", 128, 128),
    ("vgg13", "MobileNetV2", "code", 1280, 512),
    ("resnet32x4", "ShuffleV2", "code", 1024, 256),
    ("vgg13", "MobileNetV2", "repdistiller", 160, 512),
    ("resnet32x4", "ShuffleV2", "repdistiller", 464, 256),
])
def test_ickd_embedding_follows_the_tap(teacher: str, student: str, tap: str, c_s: int, c_t: int) -> None:
    d = build_distiller("ickd", create_model(student), create_model(teacher), {"tap": tap})
    conv = d.embed[0]
    assert (conv.in_channels, conv.out_channels) == (c_s, c_t)


def test_ickd_default_on_wrn_is_the_post_bn_relu_map() -> None:
    torch.manual_seed(0)
    student, teacher = create_model("wrn_16_2"), create_model("wrn_40_2")
    d = build_distiller("ickd", student, teacher).eval()
    x, y = _x(), torch.tensor([1, 2])
    with torch.no_grad():
        _, losses = d(x, y)
        f_s = torch.relu(student.bn1(student(x, with_features=True)[1][-2]))
        f_t = torch.relu(teacher.bn1(teacher(x, with_features=True)[1][-2]))
        expected = 2.5 * ickd_loss(d.embed(f_s), f_t)
        old = build_distiller("ickd", student, teacher, {"tap": "repdistiller"}).eval()
        old.embed.load_state_dict(d.embed.state_dict())
        _, losses_old = old(x, y)
    assert losses["ickd"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses["ickd"].item() != pytest.approx(losses_old["ickd"].item(), rel=1e-3)


def test_iekd_on_wrn_taps_post_bn_relu_in_both_stages() -> None:
    torch.manual_seed(0)
    student, teacher = create_model("wrn_16_2"), create_model("wrn_40_2")
    d = build_distiller("iekd", student, teacher).eval()
    assert d.autoencoder.encoder[1].in_channels == 128 and d.n_inherit == 64
    x, y = _x(), torch.tensor([1, 2])
    with torch.no_grad():
        f_t = teacher(x, prepool=True)[1]
        f_s = student(x, prepool=True)[1]
        assert (f_t >= 0).all()
        rec = d.pretrain_loss(x)["reconstruction"]
        assert rec.item() == pytest.approx((d.autoencoder(f_t) - f_t).abs().mean().item(), rel=1e-6)
        _, losses = d(x, y)
        inherit = factor_distance(d.autoencoder.encoder(f_t), d.inherit_encoder(f_s[:, :64]))
    assert losses["inherit"].item() == pytest.approx(inherit.item(), rel=1e-6)


# --- identity and labels of runs made before the option -------------------------------------------------
def _committed(method: str) -> dict:
    return json.loads((PROXY / method / "default/seed0/record.json").read_text())


def _with(record: dict, **changes: object) -> dict:
    new = copy.deepcopy(record)
    config = changes.pop("method_config", None)
    if config is not None:
        new["method_config"].update(config)
    new.update(changes)
    return new


def test_taps_agree_on_every_pair_without_wrn_mobilenetv2_or_shufflev2() -> None:
    assert taps_agree("resnet32", "resnet8") and taps_agree("resnet32x4", "ShuffleV1") and taps_agree(None)
    assert not taps_agree("wrn_40_2", "resnet8") and not taps_agree("resnet32x4", "ShuffleV2")
    assert not taps_agree("vgg13", "MobileNetV2")


def test_tap_keeps_the_config_id_of_earlier_runs_where_it_reads_the_same_map() -> None:
    old = _committed("ickd")  # resnet32 -> resnet8, made before the option existed
    assert "tap" not in old["method_config"]
    for tap in ("code", "repdistiller"):
        assert run_record.config_id(_with(old, method_config={"tap": tap})) == old["config_id"]
    wrn = _with(old, teacher="wrn_40_2", student="wrn_16_2")
    before = run_record.config_id(wrn)
    assert run_record.config_id(_with(wrn, method_config={"tap": "repdistiller"})) == before
    assert run_record.config_id(_with(wrn, method_config={"tap": "code"})) != before


def test_labels_say_what_earlier_runs_ran() -> None:
    ickd = _committed("ickd")
    assert record_variant(ickd) == "default"  # resnet: the two taps are one map
    assert record_variant(_with(ickd, student="wrn_16_2", teacher="wrn_40_2")) == "tap=repdistiller"
    iekd = json.loads((PROXY / "iekd/exp_weight=50.0,inh_weight=50.0/seed0/record.json").read_text())
    assert iekd["variant"] == "default"  # as written when λ = 50 was the default
    assert record_variant(iekd) == "exp_weight=50.0,inh_weight=50.0"
    assert record_variant({"method": "nope", "variant": "x=1"}) == "x=1"
