"""Tests for :mod:`kdlib.models`: RepDistiller compatibility, feature lists, registry, checkpoint loading.

The RepDistiller expectations (state-dict keys and shapes, parameter counts, feature and logit shapes for a
32x32 input) come from ``fixtures/repdistiller_cifar_zoo.json``, generated from RepDistiller's own model code.
Everything runs on CPU with batch 2 and small inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from kdlib.models import (
    CheckpointError,
    available,
    create_model,
    default_num_classes,
    feature_shapes,
    load_teacher,
    model_spec,
)
from kdlib.models.cifar.shufflenetv2 import ShuffleBlock

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "repdistiller_cifar_zoo.json").read_text())
CIFAR_ZOO = list(FIXTURE)
CD_PAIR = ["resnet50_cifar", "resnet152_cifar"]
IMAGENET = ["resnet18", "resnet34", "resnet50", "mobilenet_v2"]
# Families whose stage features are post-ReLU and whose preact features are the same tensors before that ReLU.
RELU_OF_PREACT = [
    *[n for n in CIFAR_ZOO if n.startswith(("resnet", "ResNet", "vgg", "ShuffleV1"))],
    *CD_PAIR,
    "resnet18",
    "resnet50",
]


def features(model: torch.nn.Module, x: torch.Tensor, preact: bool = False):
    with torch.no_grad():
        return model(x, with_features=True, preact=preact)


@pytest.fixture(scope="module")
def x32() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def x64() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))


# ============================================================================ registry


def test_available_lists_every_model_once() -> None:
    names = available()
    assert names == [*CIFAR_ZOO, *CD_PAIR, *IMAGENET]
    assert len(set(names)) == len(names) == 28


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(
        ValueError, match=r"unknown model 'resnet9'; choose one of: resnet8, resnet14, .*ShuffleV2"
    ):
        create_model("resnet9")


def test_names_are_case_sensitive_and_not_aliased() -> None:
    with pytest.raises(ValueError, match="unknown model 'Resnet8'"):
        create_model("Resnet8")
    assert type(create_model("ResNet50")) is not type(create_model("resnet50"))
    assert model_spec("ResNet50").classifier == "linear" and model_spec("resnet50").classifier == "fc"


@pytest.mark.parametrize("name", available())
def test_classifier_entry_names_the_last_linear_layer(name: str) -> None:
    model = create_model(name, num_classes=7)
    last_linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    assert model_spec(name).classifier == last_linear
    assert model.state_dict()[f"{last_linear}.weight"].shape[0] == 7


def test_default_class_counts() -> None:
    assert {default_num_classes(n) for n in [*CIFAR_ZOO, *CD_PAIR]} == {100}
    assert {default_num_classes(n) for n in IMAGENET} == {1000}
    assert create_model("resnet8").fc.out_features == 100
    assert create_model("resnet8", num_classes=10).fc.out_features == 10
    assert create_model("mobilenet_v2").classifier[1].out_features == 1000
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        create_model("resnet8", num_classes=0)


# ============================================================================ RepDistiller's CIFAR zoo


@pytest.mark.parametrize("name", CIFAR_ZOO)
def test_matches_repdistiller(name: str, x32: torch.Tensor) -> None:
    ref = FIXTURE[name]
    model = create_model(name).eval()
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == ref["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == ref["params"]

    logits, feats = features(model, x32)
    assert [list(f.shape[1:]) for f in feats] == ref["feat_shapes"]
    assert list(logits.shape) == [2, *ref["logits"]]
    _, pre = features(model, x32, preact=True)
    assert [list(f.shape[1:]) for f in pre] == ref["feat_shapes"]
    with torch.no_grad():
        assert torch.equal(model(x32), logits)
    assert feature_shapes(model) == [tuple(s) for s in ref["feat_shapes"]]


@pytest.mark.parametrize("name", RELU_OF_PREACT)
def test_preact_is_the_stage_output_before_its_relu(name: str, x32: torch.Tensor) -> None:
    model = create_model(name).eval()
    _, post = features(model, x32)
    _, pre = features(model, x32, preact=True)
    assert torch.equal(pre[0], post[0]) and torch.equal(pre[-1], post[-1])
    for p, q in zip(pre[1:-1], post[1:-1], strict=True):
        assert torch.equal(F.relu(p), q)
        assert (p < 0).any()  # genuinely before the ReLU


def test_wrn_preact_is_the_following_batchnorm(x32: torch.Tensor) -> None:
    """RepDistiller's WRN: preact = the next BatchNorm applied to the (pre-activation) block output."""
    model = create_model("wrn_16_2").eval()
    _, post = features(model, x32)
    _, pre = features(model, x32, preact=True)
    with torch.no_grad():
        assert torch.equal(pre[1], model.block2.layer[0].bn1(post[1]))
        assert torch.equal(pre[2], model.block3.layer[0].bn1(post[2]))
        assert torch.equal(pre[3], model.bn1(post[3]))


def test_shufflev2_preact_is_unshuffled_and_before_relu(x32: torch.Tensor) -> None:
    model = create_model("ShuffleV2").eval()
    _, post = features(model, x32)
    _, pre = features(model, x32, preact=True)
    for p, q in zip(pre[1:-1], post[1:-1], strict=True):
        assert torch.equal(ShuffleBlock(2)(F.relu(p)), q)


def test_mobilenetv2_ignores_preact(x32: torch.Tensor) -> None:
    model = create_model("MobileNetV2").eval()
    _, post = features(model, x32)
    _, pre = features(model, x32, preact=True)
    assert all(torch.equal(p, q) for p, q in zip(pre, post, strict=True))


def test_feature_shapes_leaves_the_model_as_it_was() -> None:
    model = create_model("resnet8")
    model.layer1.eval()  # a mixed train/eval state must survive
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    assert feature_shapes(model, (3, 32, 32))[0] == (16, 32, 32)
    assert model.training and not model.layer1.training and model.layer2.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())


# ============================================================================ CD pair and ImageNet backbones


@pytest.mark.parametrize("name", CD_PAIR)
def test_cd_cifar_resnets(name: str, x32: torch.Tensor) -> None:
    model = create_model(name).eval()
    logits, feats = features(model, x32)
    assert logits.shape == (2, 100)
    assert [tuple(f.shape[1:]) for f in feats] == [
        (64, 32, 32),
        (256, 32, 32),
        (512, 16, 16),
        (1024, 8, 8),
        (2048, 4, 4),
        (2048,),
    ]
    depth = name.removesuffix("_cifar")
    reference = getattr(torchvision.models, depth)(num_classes=100)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    expected["conv1.weight"] = (64, 3, 3, 3)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert model.conv1.stride == (1, 1) and isinstance(model.maxpool, torch.nn.Identity)


IMAGENET_FEATURES_64 = {
    "resnet18": [(64, 16, 16), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2), (512,)],
    "resnet34": [(64, 16, 16), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2), (512,)],
    "resnet50": [(64, 16, 16), (256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2), (2048,)],
    "mobilenet_v2": [(32, 32, 32), (24, 16, 16), (32, 8, 8), (96, 4, 4), (320, 2, 2), (1280,)],
}


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_backbones_are_torchvision(name: str, x64: torch.Tensor) -> None:
    reference = getattr(torchvision.models, name)()
    model = create_model(name).eval()
    assert isinstance(model, type(reference))
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [
        (k, v.shape) for k, v in reference.state_dict().items()
    ]
    logits, feats = features(model, x64)
    assert logits.shape == (2, 1000)
    assert [tuple(f.shape[1:]) for f in feats] == IMAGENET_FEATURES_64[name]
    with torch.no_grad():
        assert torch.equal(model(x64), logits)
        head = model.classifier if name == "mobilenet_v2" else model.fc
        assert torch.equal(head(feats[-1]), logits)  # the pooled vector is the classifier's input
    _, pre = features(model, x64, preact=True)
    assert [tuple(f.shape[1:]) for f in pre] == IMAGENET_FEATURES_64[name]
    if name == "mobilenet_v2":  # the blocks end without activation: pre == post
        assert all(torch.equal(p, q) for p, q in zip(pre, feats, strict=True))
    hooked = [m for m in model.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert hooked == []  # hooks live for one call only


def test_with_features_keeps_gradients(x32: torch.Tensor) -> None:
    model = create_model("resnet18", num_classes=10)
    logits, feats = model(x32, with_features=True, preact=True)
    (logits.sum() + sum(f.mean() for f in feats)).backward()
    assert model.conv1.weight.grad is not None and model.layer4[-1].conv2.weight.grad is not None


# ============================================================================ load_teacher


def _same_logits(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_loads_repdistiller_checkpoint(tmp_path: Path, x32: torch.Tensor) -> None:
    model = create_model("resnet8x4")
    model(x32)  # move BN running stats away from their init
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save(
        {
            "epoch": 240,
            "model": model.state_dict(),
            "best_acc": torch.tensor(73.1),
            "optimizer": opt.state_dict(),
        },
        path,
    )
    teacher = load_teacher(path, name="resnet8x4")
    assert not teacher.training
    assert _same_logits(teacher, model, x32)


def test_loads_kdlib_checkpoint_and_infers_classes(tmp_path: Path, x32: torch.Tensor) -> None:
    model = create_model("wrn_16_1", num_classes=10)
    path = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "arch": "wrn_16_1", "num_classes": 10}, path)
    teacher = load_teacher(path)
    assert teacher.fc.out_features == 10 and _same_logits(teacher, model, x32)
    # RepDistiller format, class count from the classifier weight
    torch.save({"model": model.state_dict()}, path)
    assert load_teacher(path, name="wrn_16_1").fc.out_features == 10


def test_loads_torchvision_weights_file(tmp_path: Path, x64: torch.Tensor) -> None:
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(reference.state_dict(), path)
    teacher = load_teacher(path, name="resnet18")
    assert _same_logits(teacher, reference, x64)


def test_strips_data_parallel_prefix(tmp_path: Path, x32: torch.Tensor) -> None:
    model = create_model("resnet8")
    path = tmp_path / "ddp.pt"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    assert _same_logits(load_teacher(path, name="resnet8"), model, x32)


def test_arch_conflict_and_missing_arch(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"model": create_model("resnet8").state_dict(), "arch": "resnet8", "num_classes": 100}, path)
    with pytest.raises(CheckpointError, match=r"holds a 'resnet8' model, but 'resnet14' was requested"):
        load_teacher(path, name="resnet14")
    torch.save({"model": create_model("resnet8").state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"no 'arch' entry; pass name=, one of: resnet8, "):
        load_teacher(path)


def test_wrong_architecture_names_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet8.pth"
    torch.save({"model": create_model("resnet8").state_dict()}, path)
    with pytest.raises(
        CheckpointError, match=r"does not fit resnet14 .*missing keys \(layer1\.1\.conv1\.weight"
    ):
        load_teacher(path, name="resnet14")
    with pytest.raises(CheckpointError, match=r"missing keys .*unexpected keys .*another architecture"):
        load_teacher(path, name="wrn_16_1")


def test_wrong_class_count_names_the_shapes(tmp_path: Path) -> None:
    path = tmp_path / "resnet8.pth"
    torch.save({"model": create_model("resnet8").state_dict()}, path)
    with pytest.raises(
        CheckpointError, match=r"fc\.weight: file \(100, 64\) vs model \(10, 64\).*has 100 classes"
    ):
        load_teacher(path, name="resnet8", num_classes=10)


def test_truncated_and_foreign_files(tmp_path: Path) -> None:
    good = tmp_path / "good.pth"
    torch.save({"model": create_model("resnet8").state_dict()}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"truncated\.pth' is not a readable PyTorch checkpoint"):
        load_teacher(truncated, name="resnet8")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes\.txt' is not a readable PyTorch checkpoint"):
        load_teacher(text, name="resnet8")
    a_list = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(CheckpointError, match=r"list\.pt' is not a model checkpoint"):
        load_teacher(a_list, name="resnet8")
    with pytest.raises(CheckpointError, match=r"no checkpoint file at .*missing\.pth"):
        load_teacher(tmp_path / "missing.pth", name="resnet8")


class Payload:
    """Stands for anything that would need unsafe unpickling."""


def test_refuses_unsafe_pickles(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pth"
    torch.save({"model": create_model("resnet8").state_dict(), "opt": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load .*unsafe\.pth.*unsafe unpickling .*Payload"):
        load_teacher(path, name="resnet8")
