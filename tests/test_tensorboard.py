"""--tensorboard (kdlib.curves): scalars in the run folder, a one-line error without the package, no effect on
the run's identity."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
from helpers import write_fashion_mnist

from kdlib import curves, train
from kdlib.config import TrainConfig, plan
from kdlib.record import config_id_of

pytest.importorskip("tensorboard")


def config(tmp_path: Path, **kw: object) -> TrainConfig:
    data = tmp_path / "data"
    if not data.exists():
        write_fashion_mnist(data, train_per_class=4, test_per_class=2)
    return TrainConfig(method="ce", student="resnet8", dataset="fashion_mnist", out=tmp_path / "run",
                       recipe="smoke", epochs=2, subset=40, eval_subset=20, batch_size=20, data_root=data,
                       workers=0, device="cpu", **kw)


def test_tensorboard_is_not_part_of_the_identity(tmp_path: Path) -> None:
    plain = config(tmp_path)
    assert config_id_of(plain) == config_id_of(dataclasses.replace(plain, tensorboard=True))


def test_a_missing_package_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else find_spec(name, *a))
    with pytest.raises(ValueError, match=r"^--tensorboard needs the tensorboard package: pip install "
                                         r"'kdlib\[tensorboard\]'$"):
        plan(config(tmp_path, tensorboard=True))


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast"])
def test_a_run_writes_step_and_epoch_scalars(tmp_path: Path, fast: bool) -> None:
    """Both paths write each term per step (the fast path at the end of each epoch), on one step axis."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    record = train.train(config(tmp_path, tensorboard=True, precision="fp32", fast=fast))
    assert record["speed"]["path"] == ("fast" if fast else "dataloader")
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"step/ce", "step/loss", "epoch/ce", "epoch/top1", "epoch/lr", "epoch/images_per_s"} <= tags
    assert [e.step for e in events.Scalars("step/ce")] == [1, 2, 3, 4]  # 2 steps per epoch
    steps = [e.value for e in events.Scalars("step/ce")]  # two batches of 20: an epoch's mean is theirs
    assert [(steps[0] + steps[1]) / 2, (steps[2] + steps[3]) / 2] == pytest.approx(
        [h["losses"]["ce"] for h in record["history"]], rel=1e-6)
    assert [e.value for e in events.Scalars("epoch/top1")] == pytest.approx(
        [h["top1"] for h in record["history"]])
    assert curves.MISSING.startswith("--tensorboard")


def test_a_profile_or_notebook_parameter_turns_it_on_for_every_run() -> None:
    from kdlib import study

    profile = study.load_profile("smoke")
    profile["common"]["train_options"] = {"tensorboard": True}
    params = study.notebook_parameters(profile, "01_ickd")
    assert params["train_options"] == {"tensorboard": True}
    runs = study.plan_runs(study.check_notebook_parameters("01_ickd", params))
    assert runs and all(run.config.tensorboard for run in runs)
    plain = study.plan_runs(study.check_notebook_parameters("01_ickd", {**params, "train_options": {}}))
    assert [r.config_id for r in runs] == [r.config_id for r in plain]  # the same runs: skipped when done
    with pytest.raises(study.ParameterError,
                       match="parameter 'train_options': option 'tensorboard' is a switch: true or false"):
        study.check_notebook_parameters("01_ickd", {**params, "train_options": {"tensorboard": 1}})
