"""bench/gpu_check.py, the script a lent GPU machine runs: its CPU dry run end to end (every file and column
it writes), its deadline and failure handling, its device-time arithmetic, and kdlib's synthetic CIFAR-100
writer."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kdlib import compilation
from kdlib.cifar import write_synthetic_cifar100
from kdlib.data import load_data

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"
PARITY = ["precision", "step", "logits_max_abs_diff", "loss_max_abs_diff", "loss_compiled", "loss_eager"]
PARITY_SUMMARY = [
    "precision", "pair", "batch", "steps", "data", "same_inputs", "forward_compiled", "forward_eager",
    "logits_max_abs_diff", "loss_max_abs_diff", "weights_max_abs_diff", "weights_worst_tensor",
    "weights_max_abs", "cudagraphs", "cudagraph_skips", "cudagraph_nodes", "cudagraph_log", "compiled_s",
    "eager_s"]
THROUGHPUT = [
    "mode", "pair", "processes", "batch", "steps_per_process", "status", "window_s", "aggregate_steps_per_s",
    "per_process_steps_per_s", "aggregate_images_per_s", "runs_240ep_per_hour", "hours_per_240ep_run",
    "forward", "precision", "threads_per_process", "warmup_s_max", "data"]
PROFILE = ["rank", "name", "calls", "time_total_ms", "pct_of_total", "clock"]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """The dry run as bench/README.md gives it, once for the module's tests (about 80 s on 2 idle cores; the
    limit leaves room for cores shared with another job)."""
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return out, result


def test_dry_run_runs_every_stage(dry_run) -> None:
    out, result = dry_run
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    stages = json.loads((out / "stages.json").read_text())["stages"]
    assert list(stages) == ["setup", "parity", "reproduce", "kd_row", "throughput", "profile",
                            "throughput_mps"]
    assert all(stages[name]["status"] == "ok" for name in list(stages)[:-1]), stages
    assert stages["throughput_mps"]["status"].startswith("skipped: MPS is CUDA only")
    assert "stage parity: ok" in result.stdout and (out / "summary.txt").read_text() in result.stdout
    env = json.loads((out / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert env["commit"] and env["device_name"]
    assert json.loads((out / "data.json").read_text())["train_images"] == 400  # 4 synthetic images per class


def test_dry_run_parity_files(dry_run) -> None:
    out, _ = dry_run
    columns, rows = _rows(out / "parity.csv")
    assert columns == PARITY and [(r["precision"], r["step"]) for r in rows] == [
        (p, str(i)) for p in ("fp32", "bf16") for i in range(3)]
    columns, summary = _rows(out / "parity_summary.csv")
    assert columns == PARITY_SUMMARY and [r["precision"] for r in summary] == ["fp32", "bf16"]
    for row in summary:
        assert row["same_inputs"] == "True" and row["forward_eager"] == "eager"
        assert row["forward_compiled"].startswith("compiled") and row["cudagraphs"] == "not applicable (cpu)"
        diffs = [float(row[k]) for k in ("logits_max_abs_diff", "loss_max_abs_diff", "weights_max_abs_diff")]
        assert all(math.isfinite(d) and d >= 0 for d in diffs)
        assert float(row["weights_max_abs"]) > 0
    fp32 = summary[0]  # aot_eager runs the eager step's own operations: the same numbers
    assert float(fp32["loss_max_abs_diff"]) < 1e-4 and float(fp32["weights_max_abs_diff"]) < 1e-4


def test_dry_run_reproduce_file(dry_run) -> None:
    """The cut of the cifar100 profile: every planned run trained through the study's grid, its record made
    from the plan's configuration (its config_id) and copied to reproduce_records/."""
    out, _ = dry_run
    columns, rows = _rows(out / "reproduce.csv")
    assert columns[:3] == ["run", "status", "message"]
    assert [r["run"] for r in rows] == ["ce/default", "kd/default", "ickd/default"]
    for row in rows:
        assert (row["status"], row["planned_config_id"], row["epochs"]) == ("trained", "True", "1"), row
        assert row["side_by_side"] == "2" and float(row["grid_s"]) > 0
    records = sorted((out / "reproduce_records").rglob("record.json"))
    assert len(records) == 3
    assert {json.loads(r.read_text())["dataset"] for r in records} == {"cifar100"}
    # the head-to-head notebook from those records, through papermill, as make reproduce executes it
    assert json.loads((out / "reproduce.json").read_text()) == {"notebook": "executed"}
    params = json.loads((out / "reproduce_params.json").read_text())
    assert (params["train"], params["pairs"], params["dataset"]) == (False, ["resnet14->resnet8"], "cifar100")
    executed = (out / "reproduce_06_head_to_head.ipynb").read_text()
    assert "rendering the 3 committed records" in executed and "GPU CHECK, not a result" in executed


def test_dry_run_throughput_file(dry_run) -> None:
    out, _ = dry_run
    columns, rows = _rows(out / "throughput.csv")
    assert columns == THROUGHPUT
    assert [(r["pair"], r["processes"]) for r in rows] == [
        (pair, n) for pair in ("kd resnet20->resnet8", "kd resnet14->resnet8") for n in ("1", "2")]
    steps_240 = 240 * math.ceil(50_000 / 16)
    for row in rows:
        assert row["mode"] == "cpu" and row["status"] == "ok" and row["threads_per_process"] == "1"
        rate = float(row["aggregate_steps_per_s"])
        assert rate > 0 and float(row["window_s"]) > 0
        assert float(row["runs_240ep_per_hour"]) == pytest.approx(rate * 3600 / steps_240, rel=1e-4)
        assert float(row["aggregate_images_per_s"]) == pytest.approx(16 * rate, rel=1e-4)


def test_dry_run_profile_and_bench_files(dry_run) -> None:
    out, _ = dry_run
    columns, rows = _rows(out / "profile_ops.csv")
    assert columns == PROFILE and 1 <= len(rows) <= 25 and rows[0]["clock"] == "self cpu time"
    times = [float(r["time_total_ms"]) for r in rows]
    assert times == sorted(times, reverse=True) and sum(float(r["pct_of_total"]) for r in rows) <= 100.01
    profile = json.loads((out / "profile_summary.json").read_text())
    assert profile["steps"] == 3 and profile["ms_per_step_unprofiled"] > 0
    assert profile["device_busy_s"] is None  # a CPU has no device timeline
    columns, rows = _rows(out / "bench_kd.csv")
    assert columns[:2] == ["date", "commit"] and len(rows) == 1 and rows[0]["pair"] == "kd resnet56->resnet20"


def test_stages_keep_to_the_deadline_and_record_failures(gpu_check) -> None:
    clock = [0.0]
    given: dict[str, float] = {}

    def runner(name: str, timeout: float) -> dict:
        given[name] = timeout
        clock[0] += {"setup": 10, "parity": 5, "reproduce": 0, "kd_row": 400}.get(name, timeout)  # rest: all
        if name == "parity":
            raise RuntimeError("no GPU")
        return {"status": "ok"}

    seen = []
    budgets = dict.fromkeys(gpu_check.STAGES, 100.0)
    results = gpu_check.run_stages(list(gpu_check.STAGES), budgets, 450.0, runner,
                                   lambda r: seen.append(dict(r)), now=lambda: clock[0])
    assert results["setup"]["status"] == "ok"
    assert results["parity"]["status"] == "failed (RuntimeError: no GPU)"
    assert results["kd_row"]["status"] == "ok" and given["kd_row"] == 100.0  # min(budget, time left)
    assert given["throughput"] == pytest.approx(35.0)  # 450 - 415 left: less than its budget
    assert all(results[n]["status"] == "skipped: deadline" for n in ("profile", "throughput_mps"))
    assert len(seen) == len(gpu_check.STAGES)  # stages.json written after every stage


def test_busy_seconds_is_the_union_of_device_intervals(gpu_check) -> None:
    def event(start: float, end: float, kind: str = "CUDA") -> SimpleNamespace:
        return SimpleNamespace(device_type=getattr(torch.autograd.DeviceType, kind),
                               time_range=SimpleNamespace(start=start, end=end))

    events = [event(0, 10), event(5, 20), event(30, 40), event(32, 35), event(36, 38), event(0, 1000, "CPU")]
    assert gpu_check.busy_seconds(events) == pytest.approx(30e-6)  # microseconds in, seconds out


def test_cudagraph_verdict(gpu_check) -> None:
    """The script's words for CUDA graphs are kdlib's, which the trainer's records use too."""
    assert gpu_check.cudagraph_verdict is compilation.cudagraph_verdict
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    compiled = SimpleNamespace(is_compiled=True, describe=lambda: "compiled (reduce-overhead)")
    eager = SimpleNamespace(is_compiled=False, describe=lambda: "eager (fallback: BackendCompilerFailed)")
    info = {"skips": 0, "log": "", "nodes": 3}
    assert gpu_check.cudagraph_verdict(cuda, compiled, info) == "used (3 graphs recorded)"
    skipped = {"skips": 1, "log": "skipping cudagraphs due to mutated inputs (1 instances)", "nodes": 0}
    assert gpu_check.cudagraph_verdict(cuda, compiled, skipped) == "skipped: mutated inputs (1 instances)"
    assert gpu_check.cudagraph_verdict(cuda, compiled, {**info, "nodes": 0}).startswith("unknown")
    assert gpu_check.cudagraph_verdict(cuda, eager, info).startswith("not used (eager (fallback")
    assert gpu_check.cudagraph_verdict(cpu, compiled, info) == "not applicable (cpu)"


def test_gpu_check_needs_only_torch_torchvision_numpy() -> None:
    code = ("import sys, runpy\n"
            "for name in ('pandas', 'tqdm', 'matplotlib', 'scipy', 'yaml', 'papermill'):\n"
            "    sys.modules[name] = None\n"
            "runpy.run_path('bench/gpu_check.py', run_name='gpu_check')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def test_synthetic_cifar100_reads_back_through_kdlib(tmp_path: Path) -> None:
    write_synthetic_cifar100(tmp_path / "a", train_per_class=2, test_per_class=1, rows=7)
    write_synthetic_cifar100(tmp_path / "b", train_per_class=2, test_per_class=1)
    for split in ("train", "test"):  # the pixels do not depend on how many rows are drawn at a time
        a, b = (pickle.loads((tmp_path / r / "cifar-100-python" / split).read_bytes()) for r in "ab")
        assert np.array_equal(a["data"], b["data"]) and a["fine_labels"] == b["fine_labels"]
    data = load_data("cifar100", tmp_path / "a", batch_size=8, workers=0, download=False)
    assert (data.train_size, data.test_size) == (200, 100)
    labels = np.asarray([y for _, y in data.train.dataset])
    assert np.array_equal(np.bincount(labels, minlength=100), np.full(100, 2))
    train = pickle.loads((tmp_path / "a" / "cifar-100-python" / "train").read_bytes())
    means = [train["data"][np.asarray(train["fine_labels"]) == c].mean() for c in (0, 99)]
    assert means[0] + 100 < means[1]  # the mean grows with the label: 21 against 219
