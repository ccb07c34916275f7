"""Runs side by side on GPUs (kdlib.packing), without a GPU: the GPUs are named through
``CUDA_VISIBLE_DEVICES`` and CUDA MPS is a fake ``nvidia-cuda-mps-control`` that logs what it is asked."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import write_teacher

from kdlib import packing, study
from kdlib.study import grid


@pytest.fixture
def fake_mps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``nvidia-cuda-mps-control`` on PATH that appends its arguments, stdin and pipe folder to a log."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "mps_calls.txt"
    bin_dir.mkdir()
    script = bin_dir / packing.MPS_CONTROL
    script.write_text(f'#!/bin/sh\nif [ "$1" = "-d" ]; then echo "start $CUDA_MPS_PIPE_DIRECTORY" >> {calls};'
                      f' else read line; echo "$line" >> {calls}; fi\n')
    script.chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    return calls


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert packing.visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert packing.visible_gpus() == []
    assert packing.jobs_for(4, ["2", "3"]) == 8
    with pytest.raises(ValueError, match=r"^--runs-per-gpu 4 needs a CUDA GPU and this machine shows none"):
        packing.jobs_for(4)


def test_each_gpu_gets_its_share_and_no_slot_is_held_twice(monkeypatch: pytest.MonkeyPatch,
                                                            fake_mps: Path) -> None:
    """Six processes over two GPUs: three per GPU under one MPS daemon; twelve runs through six threads
    never hold a slot twice at once, and every slot's process names one GPU and the daemon's pipe."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    held, clash, lock = set(), [], threading.Lock()

    def train(slots: packing.Slots) -> None:
        with slots.take() as slot:
            with lock:
                clash.append(id(slot) in held)
                held.add(id(slot))
            time.sleep(0.01)
            with lock:
                held.discard(id(slot))

    with packing.side_by_side(6, "cuda") as slots:
        environments = slots.environments
        workers = [threading.Thread(target=train, args=(slots,)) for _ in range(12)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        pipe = Path(environments[0]["CUDA_MPS_PIPE_DIRECTORY"])
        assert pipe.is_dir()
    assert not any(clash) and len(clash) == 12
    assert Counter(env["CUDA_VISIBLE_DEVICES"] for env in environments) == {"0": 3, "1": 3}
    assert {env["CUDA_MPS_PIPE_DIRECTORY"] for env in environments} == {str(pipe)}
    assert fake_mps.read_text().splitlines() == [f"start {pipe}", "get_server_list", "quit"]
    assert not pipe.exists()  # the private daemon's folder goes with it


def test_one_run_per_gpu_needs_no_mps_and_other_devices_are_not_spread(
        monkeypatch: pytest.MonkeyPatch, fake_mps: Path) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with packing.side_by_side(2, "auto") as slots:
        assert slots.environments == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    for device in ("cpu", "cuda:1"):
        with packing.side_by_side(3, device) as slots:
            assert slots.environments == [{}, {}, {}]
    assert not fake_mps.exists()  # never started


def test_without_mps_the_runs_are_time_sliced_and_the_log_says_so(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-cuda-mps-control
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    with caplog.at_level("INFO"), packing.side_by_side(2, "cuda") as slots:
        assert slots.environments == [{"CUDA_VISIBLE_DEVICES": "0"}] * 2
    assert "2 runs per GPU without CUDA MPS: the driver time-slices their kernels" in caplog.text


def test_a_daemon_that_does_not_start_means_time_slicing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    failing = tmp_path / packing.MPS_CONTROL
    failing.write_text("#!/bin/sh\necho 'An instance of this daemon is already running' >&2\nexit 1\n")
    failing.chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    with caplog.at_level("WARNING"), packing.mps_daemon() as mps:
        assert mps is None
    assert "CUDA MPS did not start" in caplog.text


def test_a_daemon_already_named_is_used_as_it_is(monkeypatch: pytest.MonkeyPatch, fake_mps: Path) -> None:
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", "/var/run/mps")
    with packing.mps_daemon() as mps:
        assert mps == {"CUDA_MPS_PIPE_DIRECTORY": "/var/run/mps"}
    assert not fake_mps.exists()


def test_run_grid_gives_each_process_its_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Four runs, two side by side on two named GPUs: each ``python -m kdlib train`` process is started with
    one GPU, and the two that run at once hold different ones (the training itself is replaced)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    started: list[dict[str, Any]] = []
    running: set[str] = set()
    lock = threading.Lock()

    def fake_run(argv: list[str], env: dict[str, str], **_: Any) -> Any:
        with lock:
            assert env["CUDA_VISIBLE_DEVICES"] not in running
            running.add(env["CUDA_VISIBLE_DEVICES"])
            started.append({"gpu": env["CUDA_VISIBLE_DEVICES"], "threads": env["OMP_NUM_THREADS"]})
        time.sleep(0.05)
        with lock:
            running.discard(env["CUDA_VISIBLE_DEVICES"])
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(grid.subprocess, "run", fake_run)
    monkeypatch.setattr(grid.os, "cpu_count", lambda: 2)
    write_teacher(tmp_path / "teachers" / "fashion_mnist" / "resnet14" / "model.pt")
    params = study.check_parameters(method="kd", dataset="fashion_mnist", pairs=["resnet14->resnet8"],
                                    epochs=1, recipe="smoke", seeds=[0, 1, 2, 3], variants=["default"],
                                    baselines=[], device="auto", out_dir=tmp_path / "runs",
                                    teachers_dir=tmp_path / "teachers", train_options={"precision": "fp32"})
    outcomes = grid.run_grid(study.plan_runs(params), jobs=2, verbose=False)
    assert [o.status for o in outcomes] == ["failed"] * 4  # no record was written by the fake
    assert len(started) == 4 and {s["gpu"] for s in started} == {"0", "1"}
    assert {s["threads"] for s in started} == {"1"}


def test_the_command_line_asks_for_runs_per_gpu_on_a_gpu(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert study.main(["reproduce", "--profile", "smoke", "--runs-per-gpu", "2"]) == 2
    assert "--runs-per-gpu 2 needs a CUDA GPU and this machine shows none" in capsys.readouterr().err
    assert study.main(["reproduce", "--profile", "smoke", "--runs-per-gpu", "2", "--jobs", "2"]) == 2
    assert "give --jobs or --runs-per-gpu, not both" in capsys.readouterr().err
