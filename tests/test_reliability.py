"""When things go wrong, end to end through the real command line (``python -m kdlib train`` in subprocesses).

- Bad input: exit status 2, exactly one stderr line ``kdlib: error: ...``, no traceback, no run started, for
  teacher checkpoints that do not fit or cannot be read or need unsafe unpickling, data missing offline, an
  output folder that cannot be written, and a folder in use by another run (unknown names: test_cli.py).
- A non-finite loss stops the run (exit 1) naming the term; the last good checkpoint is kept; the record says
  ``failed``.
- A full disk (a file-size limit, ``RLIMIT_FSIZE``) fails in one line, leaving no partial file.
- ``kill -9`` mid-epoch, then ``--resume``: exactly the metrics of an uninterrupted run; meanwhile every
  ``record.json``/``last.pt``/``model.pt`` that ever appears in the folder is complete.
- Two processes on one ``--out``: the second refuses.

Single-line output and the absence of tracebacks are only visible from outside the process, hence the
subprocesses. In-process counterparts (messages, resume equality per method) are in test_cli.py,
test_train.py and test_models.py.
"""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import random
import resource
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import write_fashion_mnist, write_teacher

from kdlib import runlock, train
from kdlib.results import load_records

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
TIMEOUT = 240
KILL_ARGS = ("--subset", "256", "--eval-subset", "64", "--batch-size", "16", "--epochs", "3")


class Payload:
    """Stands for any object that only unsafe unpickling could rebuild."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reliability")
    write_fashion_mnist(root / "data", train_per_class=26, test_per_class=7)
    teacher = write_teacher(root / "resnet14.pt", arch="resnet14", num_classes=10)
    state = torch.load(teacher, weights_only=True)["model"]
    write_teacher(root / "resnet14_100.pt", arch="resnet14", num_classes=100)
    torch.save({"model": state}, root / "resnet14_no_arch.pth")  # RepDistiller's format: no 'arch'
    (root / "truncated.pt").write_bytes(teacher.read_bytes()[: teacher.stat().st_size // 2])
    (root / "notes.pt").write_text("not a checkpoint\n")
    torch.save({"model": state, "arch": "resnet14", "extra": Payload()}, root / "unsafe.pt")
    (root / "a_file").write_text("a file, not a folder\n")
    (root / "a_file").chmod(0o755)  # executable too: root passes os.access(W_OK | X_OK) on it
    with open(root / "raw_pickle.pt", "wb") as f:  # no zip, protocol 4: torch warns, then refuses
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "arch": "resnet14"}, f, protocol=4)
    images = write_fashion_mnist(root / "damaged", 26, 7) / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(np.random.default_rng(0).integers(0, 256, images.stat().st_size, np.uint8).tobytes())
    return {"root": root, "data": root / "data", "teacher": teacher}


def train_args(tiny: dict[str, Path], out: Path, *extra: str, method: str = "kd") -> list[str]:
    args = [
        "train", "--method", method, "--student", "resnet8", "--dataset", "fashion_mnist",
        "--data-root", str(tiny["data"]), "--recipe", "smoke", "--workers", "0", "--no-download",
        "--no-progress", "--device", "cpu", "--out", str(out),
    ]
    if method != "ce" and "--teacher-ckpt" not in extra:
        args += ["--teacher-ckpt", str(tiny["teacher"])]
    if "--epochs" not in extra:
        args += ["--epochs", "1", "--subset", "20", "--eval-subset", "10", "--batch-size", "10"]
    return [*args, *extra]


def kdlib(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kdlib", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=TIMEOUT, **kw)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: list[str]) -> subprocess.Popen[str]:
    """``python -m kdlib ARGS`` in the background, with Ctrl-C's default disposition, as a terminal gives
    it: a test suite started in the background by a non-interactive shell inherits SIGINT ignored, and so
    would the run, which then trains through the Ctrl-C test's signal."""
    return subprocess.Popen([sys.executable, "-m", "kdlib", *args], cwd=REPO, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_default_sigint)


def one_error_line(done: subprocess.CompletedProcess[str], status: int) -> str:
    """The single ``kdlib: error:`` line of a run that exited with ``status``, without any traceback."""
    errors = [line for line in done.stderr.splitlines() if line.startswith("kdlib: error: ")]
    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stderr and len(errors) == 1, done.stderr
    assert done.stderr.splitlines()[-1] == errors[0]
    return errors[0]


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


# --- bad input: exit 2, one line, nothing started -------------------------------------------------
# Unknown method, architecture, dataset, recipe or variant: test_cli.py (INVALID, in-process, with the same
# one-line/exit-2 checks, and test_real_subprocess). Here: what is found only once the run starts loading.
BAD_INPUT = {  # kind: (extra arguments, part of the message)
    "teacher of another architecture": (
        ["--teacher", "resnet8"], "holds a 'resnet14' model, but 'resnet8' was requested"),
    "teacher of another architecture, no 'arch' entry": (
        ["--teacher", "resnet8", "--teacher-ckpt", "{root}/resnet14_no_arch.pth"],
        "does not fit resnet8"),
    "teacher of another class count": (
        ["--teacher-ckpt", "{root}/resnet14_100.pt"], "the file's classifier has 100 classes, the model 10"),
    "truncated teacher": (["--teacher-ckpt", "{root}/truncated.pt"], "is not a readable PyTorch checkpoint"),
    "not a checkpoint": (["--teacher-ckpt", "{root}/notes.pt"], "is not a readable PyTorch checkpoint"),
    "unsafe pickle": (["--teacher-ckpt", "{root}/unsafe.pt"],
                      "needs unsafe unpickling (it contains test_reliability.Payload"),
    "data missing offline": (["--method", "ce", "--dataset", "cifar100", "--data-root", "{root}/empty"],
                             "CIFAR-100 not found in"),
    "output folder under a file": (["--out", "{root}/a_file/run"], "is not writable (Not a directory"),
    # issue #23, the red-team pass
    "raw pickle teacher": (["--teacher-ckpt", "{root}/raw_pickle.pt"], "refusing to load '"),
    "empty output folder": (["--out", ""], "--out is empty"),
    "output folder name too long": (["--out", "{root}/" + "a" * 300], "is not writable (File name too long"),
    "damaged Fashion-MNIST file": (["--data-root", "{root}/damaged"],
                                   "train-images-idx3-ubyte' is not a valid IDX file (magic number"),
    "huge batch size": (["--batch-size", "100000000000000000000"], "--batch-size: must be an integer <="),
    "huge seed": (["--seed", "18446744073709551616"], "--seed: must be an integer <= 18446744073709551615"),
    "--set and --epochs": (["--set", "epochs=abc"], "--set epochs=abc and --epochs 1 both set epochs"),
    "negative fitnet hint layer": (["--method", "fitnet", "--variant", "hint_layer=-1"],
                                   "hint_layer must be an integer >= 0"),
    "T=nan": (["--variant", "T=nan"], "T must be a finite number, got nan"),
    "T=inf": (["--variant", "T=inf"], "T must be a finite number, got inf"),
    "ce_weight=inf": (["--variant", "ce_weight=inf"], "ce_weight must be a finite number, got inf"),
    "cd gkd_T=nan": (["--method", "cd", "--variant", "gkd_T=nan"], "gkd_T must be a finite number, got nan"),
    "at p=-2": (["--method", "at", "--variant", "p=-2"], "p must be an integer >= 1, got -2"),
    "at p=0": (["--method", "at", "--variant", "p=0"], "p must be an integer >= 1, got 0"),
}


def _bad_argv(tiny: dict[str, Path], kind: str) -> list[str]:
    extra = [a.format(root=tiny["root"]) for a in BAD_INPUT[kind][0]]
    method = extra[extra.index("--method") + 1] if "--method" in extra else "kd"
    argv = train_args(tiny, tiny["root"] / "bad" / kind.replace(" ", "_"), method=method)
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        if flag in argv and flag != "--variant":
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


@pytest.fixture(scope="module")
def bad_runs(tiny: dict[str, Path]) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every bad-input command, two at a time (each is mostly the interpreter and torch starting)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = pool.map(lambda kind: kdlib(_bad_argv(tiny, kind)), BAD_INPUT)
        return dict(zip(BAD_INPUT, done, strict=True))


@pytest.mark.parametrize("kind", list(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_2(
    tiny: dict[str, Path], bad_runs: dict[str, subprocess.CompletedProcess[str]], kind: str
) -> None:
    done = bad_runs[kind]
    assert BAD_INPUT[kind][1] in one_error_line(done, 2)
    assert done.stderr.count("\n") == 1 and done.stdout == ""  # not even a log line before it
    out = tiny["root"] / "bad" / kind.replace(" ", "_")
    assert not out.exists() or not any(out.iterdir())  # no record, no checkpoint: nothing started


def test_every_torch_load_is_weights_only() -> None:
    """Checkpoints are untrusted input: each ``torch.load`` call in the package passes weights_only=True."""
    calls = []
    for path in sorted((REPO / "kdlib").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                safe = any(k.arg == "weights_only" and ast.unparse(k.value) == "True" for k in node.keywords)
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", safe))
    assert calls and [where for where, safe in calls if not safe] == []


def test_notebook_parameters_are_checked_before_training(tmp_path: Path) -> None:
    from kdlib import study

    good = dict(method="kd", dataset="fashion_mnist", pairs=["resnet14->resnet8"], epochs=1, recipe="smoke",
                seeds=[0], out_dir=tmp_path / "runs", teachers_dir=tmp_path / "teachers", device="cpu")
    for name, value in (("epochs", "3"), ("seeds", [-1]), ("subset", 0), ("pairs", "resnet14->resnet9")):
        with pytest.raises(ValueError, match=f"parameter '{name}'"):
            study.check_parameters(**{**good, name: value})
    assert not (tmp_path / "runs").exists()  # refused before any folder was made or anything trained


# --- failures during a run: exit 1, the record says why ----------------------------------------
def test_nonfinite_loss_stops_the_cli_run(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    # epoch 1 trains normally; then the schedule multiplies the lr by 1e30 and the loss overflows in epoch 2
    args = ["--epochs", "2", "--subset", "32", "--eval-subset", "10", "--batch-size", "8",
            "--set", "milestones=1", "--set", "gamma=1e30"]
    done = kdlib(train_args(tiny, out, *args, method="ce"))
    line = one_error_line(done, 1)
    assert "non-finite loss term 'ce'" in line and "at epoch 2, step" in line, line
    record = read_json(out / "record.json")
    assert record["status"] == "diverged" and "non-finite loss term 'ce'" in record["failure_reason"]
    assert [h["epoch"] for h in record["history"]] == [1]
    last = torch.load(out / "last.pt", weights_only=True)  # the last good checkpoint, intact
    assert last["state"]["epoch"] == 1 and last["record"]["history"] == record["history"]
    assert all(torch.isfinite(v).all() for v in last["distiller"].values() if v.is_floating_point())
    assert torch.load(out / "model.pt", weights_only=True)["arch"] == "resnet8"
    assert load_records(out).empty  # a diverged run is never read as a result
    assert load_records(out, statuses=None)["status"].tolist() == ["diverged"]


def _file_size_limit(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # writes beyond it fail with EFBIG


def test_full_disk_fails_in_one_line_without_partial_files(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    # 100 kB: enough for record.json, not for last.pt (Python ignores SIGXFSZ, so writes raise OSError)
    done = kdlib(train_args(tiny, out, method="ce"), preexec_fn=lambda: _file_size_limit(100_000))
    line = one_error_line(done, 1)
    assert f"cannot write '{out / 'last.pt'}'" in line, line
    assert sorted(p.name for p in out.iterdir()) == ["record.json"]  # no partial checkpoint, no temp file
    record = read_json(out / "record.json")
    assert record["status"] == "failed" and "cannot write" in record["failure_reason"]


# --- kill -9 and resume; nothing partial is ever visible ----------------------------------------
class FolderWatch:
    """Reads every new version of the run's files as it appears; all of them must be complete."""

    def __init__(self, out: Path) -> None:
        self.out, self.seen = out, {}
        self.versions = {"record.json": 0, "last.pt": 0, "model.pt": 0}
        self.started_at: float | None = None  # when record.json first appeared (just before epoch 1)
        self.epoch_done_at: dict[int, float] = {}  # epoch → when record.json first showed it completed

    def poll(self) -> None:
        for name in self.versions:
            path = self.out / name
            try:
                stat = path.stat()
                key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
                if self.seen.get(name) == key:
                    continue
                content = path.read_bytes()
            except FileNotFoundError:
                continue
            self.seen[name] = key
            self.versions[name] += 1
            if name == "record.json":
                record = json.loads(content)  # raises on a partial file
                self.started_at = self.started_at or time.monotonic()
                for entry in record["history"]:
                    self.epoch_done_at.setdefault(entry["epoch"], time.monotonic())
            else:
                torch.load(io.BytesIO(content), weights_only=True)  # raises on a partial file

    def until(self, proc: subprocess.Popen[str], condition: Any, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert proc.poll() is None, f"exited {proc.returncode}: {proc.communicate()[1]}"
            assert time.monotonic() < deadline, "timed out"
            self.poll()
            time.sleep(0.002)

    def run(self, proc: subprocess.Popen[str]) -> tuple[int, str]:
        while proc.poll() is None:
            self.poll()
            time.sleep(0.002)
        self.poll()
        return proc.returncode, proc.communicate()[1]


def test_kill_9_mid_epoch_then_resume_matches_an_uninterrupted_run(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    straight_out, killed_out = tmp_path / "straight", tmp_path / "killed"
    # the uninterrupted run, beside the others and watched: every version of every file must be complete
    straight_watch = FolderWatch(straight_out)
    straight_proc = start(train_args(tiny, straight_out, *KILL_ARGS))
    with ThreadPoolExecutor(max_workers=1) as pool:
        straight_done = pool.submit(straight_watch.run, straight_proc)
        try:
            after_epoch, context = _kill_twice_then_resume(tiny, killed_out)
        except BaseException:
            straight_proc.kill()
            raise
        status, err = straight_done.result()
    assert status == 0, err
    assert straight_watch.versions["last.pt"] == 3 and straight_watch.versions["record.json"] >= 4  # saw all

    # exactly the uninterrupted run's metrics (CPU)
    straight = read_json(straight_out / "record.json")
    resumed = read_json(killed_out / "record.json")
    assert resumed["status"] == "completed" and resumed["failure_reason"] is None
    assert [r["after_epoch"] for r in resumed["resumes"]] == [1, 2][:after_epoch]  # checkpointed sessions
    for key in ("history", "top1_last", "top1_best", "top5_last", "top5_best", "best_epoch", "teacher_top1",
                "config_id"):
        assert resumed[key] == straight[key], (key, context)
    a = torch.load(straight_out / "model.pt", weights_only=True)["model"]
    b = torch.load(killed_out / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in killed_out.iterdir()) == [  # the lock and stale temporary files are gone
        "last.pt", "model.pt", "record.json"]
    assert load_records(killed_out)["top1_last"].tolist() == [straight["top1_last"]]


def _kill_twice_then_resume(tiny: dict[str, Path], killed_out: Path) -> tuple[int, str]:
    """kill -9 mid-epoch 2; resume and kill -9 in (or just after) epoch 2's checkpoint write; resume to the
    end. Returns the epoch the second session's checkpoint reached and a description of the first kill."""
    # kill -9 at a random moment of epoch 2 (after epoch 1's checkpoint, before epoch 2's)
    watch = FolderWatch(killed_out)
    proc = start(train_args(tiny, killed_out, *KILL_ARGS))
    watch.until(proc, lambda: 1 in watch.epoch_done_at)
    epoch_time = watch.epoch_done_at[1] - watch.started_at  # epoch 1 and the teacher's evaluation
    delay = random.uniform(0.1, 0.5) * epoch_time
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    assert watch.run(proc)[0] == -signal.SIGKILL
    last = torch.load(killed_out / "last.pt", weights_only=True)
    killed = read_json(killed_out / "record.json")
    context = f"killed {delay:.3f} s after epoch 1 (an epoch takes {epoch_time:.3f} s)"
    assert last["state"]["epoch"] == len(killed["history"]) == 1, context
    assert killed["status"] == "running" and (killed_out / runlock.LOCK_NAME).exists()  # stale, unlocked
    assert load_records(killed_out).empty  # a killed run is never read as complete
    assert load_records(killed_out, statuses=None)["status"].tolist() == ["running"]

    # resume, and kill it again as soon as it starts writing epoch 2's checkpoint (or just after): last.pt is
    # then epoch 1's or epoch 2's, whole, and record.json may lag behind it (it is written last)
    watch = FolderWatch(killed_out)
    watch.poll()
    proc = start(train_args(tiny, killed_out, *KILL_ARGS, "--resume"))
    watch.until(proc, lambda: (killed_out / ".last.pt.tmp").exists() or watch.versions["last.pt"] > 1)
    os.kill(proc.pid, signal.SIGKILL)
    assert watch.run(proc)[0] == -signal.SIGKILL
    after_epoch = torch.load(killed_out / "last.pt", weights_only=True)["state"]["epoch"]
    record = read_json(killed_out / "record.json")
    assert after_epoch in (1, 2) and record["status"] == "running" and len(record["history"]) <= after_epoch

    # resume to the end
    status, err = watch.run(start(train_args(tiny, killed_out, *KILL_ARGS, "--resume")))
    assert status == 0, err
    return after_epoch, context


# --- concurrent runs ------------------------------------------------------------------------------
def test_a_second_run_on_the_same_folder_is_refused(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = train_args(tiny, out, "--epochs", "2", "--subset", "64", "--eval-subset", "10", "--batch-size",
                      "16", method="ce")
    first = start(args)
    watch = FolderWatch(out)
    try:
        watch.until(first, lambda: (out / "record.json").exists())  # written while holding the lock
        first.send_signal(signal.SIGSTOP)  # frozen mid-run, lock held
        before = {p.name: p.read_bytes() for p in out.iterdir()}

        second = kdlib([*args, "--resume"])
        line = one_error_line(second, 2)
        assert f"--out '{out}' is in use by another kdlib run (pid {first.pid})" in line, line
        with pytest.raises(runlock.FolderInUse, match=f"pid {first.pid}"):  # the Python API refuses too
            train.train(train.TrainConfig("ce", "resnet8", "fashion_mnist", out, recipe="smoke",
                                          data_root=tiny["data"], download=False, resume=True))
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the refused runs wrote nothing
    finally:
        first.send_signal(signal.SIGCONT)
    status, err = watch.run(first)
    assert status == 0, err
    assert read_json(out / "record.json")["status"] == "completed"
    assert not (out / runlock.LOCK_NAME).exists()


# --- issue #23: the red-team pass (each test fails on the code before the fix) --------------------
DAMAGED_LAST = {  # kind: writes OUT/last.pt
    "truncated": lambda tiny, last: last.write_bytes(tiny["teacher"].read_bytes()[:1000]),
    "text": lambda tiny, last: last.write_text("not a checkpoint\n"),
    "malicious": lambda tiny, last: torch.save({"config_id": "x", "extra": Payload()}, last),
    "a copy of model.pt": lambda tiny, last: last.write_bytes(tiny["teacher"].read_bytes()),
}


@pytest.mark.parametrize("kind", list(DAMAGED_LAST))
def test_resume_from_a_damaged_last_pt_is_one_line_and_overwrites_nothing(
    tiny: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    DAMAGED_LAST[kind](tiny, out / "last.pt")
    before = (out / "last.pt").read_bytes()
    line = one_error_line(kdlib(train_args(tiny, out, "--resume", method="ce")), 2)
    last = out / "last.pt"
    assert f"cannot resume: '{last}'" in line or f"cannot resume: refusing to load '{last}'" in line, line
    assert "delete it (and record.json) to start the run again" in line, line
    assert sorted(p.name for p in out.iterdir()) == ["last.pt"] and (out / "last.pt").read_bytes() == before


def test_fitnet_hint_layer_out_of_range_lists_the_valid_ones(tiny: dict[str, Path], tmp_path: Path) -> None:
    done = kdlib(train_args(tiny, tmp_path / "run", "--variant", "hint_layer=99", method="fitnet"))
    line = one_error_line(done, 2)
    assert "hint_layer 99 is not a feature map of both student and teacher; choose one of: 0, 1, 2, 3" in line


def test_ctrl_c_is_one_line_saying_how_to_resume(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = start(train_args(tiny, out, "--epochs", "3", "--subset", "256", "--eval-subset", "10",
                            "--batch-size", "16", method="ce"))
    watch = FolderWatch(out)
    watch.until(proc, lambda: (out / "record.json").exists())
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT)
    line = one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", err), 130)
    assert "interrupted; to continue, run the same command with --resume" in line, line
    record = read_json(out / "record.json")
    assert record["status"] == "failed" and record["failure_reason"] == "interrupted"


def test_rkd_with_a_last_batch_of_one_stays_finite(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = kdlib(train_args(tiny, out, "--epochs", "1", "--subset", "11", "--eval-subset", "10",
                            "--batch-size", "10", method="rkd"))
    assert done.returncode == 0, done.stderr
    (epoch,) = read_json(out / "record.json")["history"]
    assert all(np.isfinite(v) for v in epoch["losses"].values()) and "rkd" in epoch["losses"]


_FORK_AND_DIE = """
import os, sys, time
from kdlib.runlock import run_lock
lock = run_lock(sys.argv[1])  # kept referenced: a collected context manager would unlock
lock.__enter__()
child = os.fork()  # as a DataLoader worker: it inherits the open lock file
if child == 0:
    os.closerange(0, 3)  # the test reads our output to its end: only the lock file stays open
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
os.kill(os.getpid(), 9)
"""


def test_the_lock_dies_with_its_process_not_with_its_forked_children(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", _FORK_AND_DIE, str(out)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == -signal.SIGKILL, done.stderr
    child = int(done.stdout)
    try:
        held = [os.readlink(fd) for fd in Path(f"/proc/{child}/fd").iterdir()]
        assert str(out / runlock.LOCK_NAME) in held  # the orphaned child is alive, holding the lock file open
        lock = runlock.run_lock(out)
        lock.__enter__()  # and yet the folder is free at once
    finally:
        os.kill(child, signal.SIGKILL)
    try:
        with pytest.raises(runlock.FolderInUse, match="this process"):
            runlock.run_lock(out).__enter__()  # one process never holds a folder twice
    finally:
        lock.__exit__(None, None, None)


def test_a_profile_of_the_wrong_shape_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from kdlib.study import cli as study_cli
    from kdlib.study import profiles

    monkeypatch.setattr(profiles, "PROFILES_DIR", tmp_path)
    shapes = {"list": "[1]", "common": '{"common": [1]}', "notebook": '{"notebooks": {"x": 1}}', "json": "{"}
    for name, text in shapes.items():
        (tmp_path / f"{name}.json").write_text(text)
        with pytest.raises(ValueError, match=f"profile '{tmp_path / name}.json'"):
            profiles.load_profile(name)
    assert study_cli.main(["params", "--profile", "list", "--notebook", "01_ickd"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "must be an object with 'common' and 'notebooks' objects" in err, err
