"""The study on submitit executors (kdlib.study.executors): Slurm job arrays without a cluster, submitit-local
jobs killed and resumed, DDP tasks from Slurm's environment."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import write_fashion_mnist, write_teacher

from kdlib import distributed, study, train
from kdlib.study import executors
from kdlib.study.executors import Resources, TrainJob
from kdlib.study.grid import read_record

submitit = pytest.importorskip("submitit")

#: Record fields that differ between an interrupted-and-resumed run and an uninterrupted one by design.
WALL_TIME = {"wall_time_s", "images_per_s", "created_at", "updated_at", "hardware", "resumes", "epoch_times"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cluster")
    write_fashion_mnist(root / "data", train_per_class=8, test_per_class=4)
    teacher = root / "teachers" / "fashion_mnist" / "resnet14" / "model.pt"
    write_teacher(teacher, arch="resnet14", num_classes=10)
    return {"data": root / "data", "teachers": root / "teachers"}


def plan(tiny: dict[str, Path], out: Path, **overrides: Any) -> list[study.Run]:
    """The runs of a tiny study; fp32 unless ``train_options`` say otherwise: the jobs are subprocesses,
    which see this machine's real CPU whatever a test reports to this process (conftest.py)."""
    values: dict[str, Any] = dict(
        method="ickd", dataset="fashion_mnist", pairs=["resnet14->resnet8"], epochs=1, recipe="smoke",
        seeds=[0], variants=["default"], baselines=["ce"], device="cpu", subset=40, eval_subset=20,
        out_dir=out, teachers_dir=tiny["teachers"], data_root=tiny["data"], batch_size=20,
        train_options={"precision": "fp32"},
    )
    values.update(overrides)
    return study.plan_runs(study.check_parameters(**values))


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in WALL_TIME}


# --- options ----------------------------------------------------------------------------------------
def test_unknown_executor_names_the_allowed_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        study.main(["reproduce", "--profile", "smoke", "--executor", "pbs"])
    assert exit_.value.code == 2
    assert "invalid choice: 'pbs' (choose from 'local', 'submitit-local', 'slurm')" in capsys.readouterr().err
    with pytest.raises(ValueError, match="executor 'pbs'; choose one of: local, submitit-local, slurm$"):
        executors.check_executor("pbs")


def test_resources_come_from_the_profile_then_the_command_line() -> None:
    profile = study.load_profile("imagenet")
    resources = Resources.of(profile, partition="gpu", time_min=None)
    assert resources.gpus_per_node == 8 and resources.tasks == 8 and resources.partition == "gpu"
    assert resources.time_min == profile["cluster"]["time_min"]
    assert Resources.of(study.load_profile("cifar100")).tasks == 1
    assert Resources().tasks == 1 and Resources(tasks_per_node=2).tasks == 2
    with pytest.raises(ValueError, match=r"unknown cluster option\(s\) \['gpus'\]; choose from: partition"):
        Resources.of({"cluster": {"gpus": 2}})
    with pytest.raises(ValueError, match="time_min must be an integer >= 1, got 0"):
        Resources.of({}, time_min=0)


# --- Slurm, without a cluster -------------------------------------------------------------------------
@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``srun`` and ``sbatch`` on PATH: sbatch keeps the script it is given and answers as Slurm does. The
    real SlurmExecutor writes and submits it, so the test sees exactly what a cluster would receive."""
    bin_dir, captured = tmp_path / "bin", tmp_path / "sbatch_scripts"
    bin_dir.mkdir()
    captured.mkdir()
    scripts = {"srun": "#!/bin/sh\nexit 0\n",
               "sbatch": f'#!/bin/sh\ncp "$1" {captured}/\necho "Submitted batch job 4242"\n'}
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return captured


def test_slurm_submits_one_job_array_of_the_pending_runs(tiny: dict[str, Path], tmp_path: Path,
                                                          fake_slurm: Path) -> None:
    resources = Resources(partition="gpu", time_min=600, nodes=2, gpus_per_node=8, cpus_per_task=8,
                          mem_gb=320, array_parallelism=3)
    # what every job's 16 processes would refuse is refused before anything is submitted
    with pytest.raises(ValueError, match="global batch size 20 is not divisible by the 16 processes"):
        executors.train_pending(plan(tiny, tmp_path / "runs"), tmp_path / "results", "slurm", resources,
                                "test", block=False, folder=tmp_path / "submitit")
    assert not list(fake_slurm.iterdir())
    runs = plan(tiny, tmp_path / "runs", seeds=[0, 1], batch_size=32)  # 4 runs, 2 images per process
    outcomes, ids = executors.train_pending(runs, tmp_path / "results", "slurm", resources, "test",
                                            threads=1, block=False, folder=tmp_path / "submitit")
    assert outcomes == [] and ids == [f"4242_{i}" for i in range(4)]
    (script,) = fake_slurm.iterdir()
    lines = script.read_text().splitlines()
    for expected in ["#SBATCH --array=0-3%3", "#SBATCH --partition=gpu", "#SBATCH --time=600",
                     "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                     "#SBATCH --cpus-per-task=8", "#SBATCH --mem=320GB", "#SBATCH --job-name=kdlib-test",
                     "#SBATCH --signal=USR2@90"]:
        assert expected in lines, (expected, lines)
    srun = [line for line in lines if line.startswith("srun")]
    assert len(srun) == 1 and "-m submitit.core._submit" in srun[0], lines
    # each array task unpickles one TrainJob: the run, its threads, and resume on preemption
    job = submitit.SlurmJob(tmp_path / "submitit", "4242_2")
    delayed = submitit.helpers.DelayedSubmission.load(job.paths.submitted_pickle)
    assert isinstance(delayed.function, TrainJob) and [r.key for r in delayed.function.runs] == [runs[2].key]
    assert delayed.function.threads == 8  # cpus_per_task
    requeued = delayed.function.checkpoint()
    assert requeued.function is delayed.function  # the same run, which resumes from its last.pt


def test_runs_per_gpu_packs_the_pending_runs_into_fewer_jobs(tiny: dict[str, Path], tmp_path: Path,
                                                             fake_slurm: Path) -> None:
    """Five runs at three per GPU: an array of two jobs, the first with three runs and the second with two,
    in the planned order; each job's 6 CPUs are shared out among its runs by the job itself."""
    runs = plan(tiny, tmp_path / "runs", seeds=[0, 1, 2, 3, 4], baselines=[])
    assert len(runs) == 5
    resources = Resources(gpus_per_node=1, cpus_per_task=6, runs_per_gpu=3)
    _, ids = executors.train_pending(runs, tmp_path / "results", "slurm", resources, "test-pack", block=False,
                                     folder=tmp_path / "submitit")
    assert ids == ["4242_0", "4242_1"]
    (script,) = fake_slurm.iterdir()
    assert "#SBATCH --array=0-1%2" in script.read_text().splitlines()
    jobs = [submitit.helpers.DelayedSubmission.load(submitit.SlurmJob(tmp_path / "submitit", i)
                                                    .paths.submitted_pickle).function for i in ids]
    keys = [r.key for r in runs]
    assert [[r.key for r in job.runs] for job in jobs] == [keys[:3], keys[3:]]
    assert {job.threads for job in jobs} == {6}


def test_runs_per_gpu_is_for_one_process_runs() -> None:
    with pytest.raises(ValueError, match="runs_per_gpu 2 packs one-process runs onto one GPU; these jobs run "
                                         "each run as 8 DDP processes"):
        Resources.of({"cluster": {"gpus_per_node": 8, "runs_per_gpu": 2}})
    with pytest.raises(ValueError, match="runs_per_gpu must be an integer >= 1, got 0"):
        Resources.of({}, runs_per_gpu=0)
    assert Resources.of({"cluster": {"gpus_per_node": 1}}, runs_per_gpu=4).runs_per_gpu == 4


def test_distributed_environment_from_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Task 9 of 16 (2 nodes × 8 GPUs): the variables kdlib.distributed reads, as torchrun would set them."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "SUBMITIT_EXECUTOR"):
        monkeypatch.setenv(name, "")  # recorded, so that what export() sets is removed after the test
        monkeypatch.delenv(name)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
             "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]",
             "SUBMITIT_EXECUTOR": "slurm"}  # what submitit's sbatch script sets
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    env = executors.distributed_environment()
    assert {k: v for k, v in env.items() if k != "MASTER_PORT"} == {
        "RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "gpu07"}
    assert 20000 <= int(env["MASTER_PORT"]) <= 60000  # drawn from the job id: the same in every task
    assert (distributed.env_rank(), distributed.env_world_size(), distributed.env_local_rank()) == (9, 16, 1)
    assert distributed.process_device(torch.device("cuda")) == torch.device("cuda", 1)


# --- submitit-local -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_submitit_local_runs_ddp_tasks_with_gloo(tiny: dict[str, Path], tmp_path: Path) -> None:
    """Two tasks of one job: each exports RANK/WORLD_SIZE/MASTER_* and joins one gloo process group; the
    record's config_id is the one the study planned, so the run counts as done."""
    (run,) = plan(tiny, tmp_path / "runs", method="kd", variants=["default"], baselines=[])
    results = tmp_path / "results"
    two_tasks = Resources(time_min=10, tasks_per_node=2)
    outcomes, _ = executors.train_pending([run], results, "submitit-local", two_tasks, "test-ddp", threads=1,
                                          folder=tmp_path / "submitit")
    assert [o.status for o in outcomes] == ["trained"], outcomes[0].message
    split = outcomes[0].record["distributed"]
    assert (split["world_size"], split["backend"], split["per_process_batch"]) == (2, "gloo", 10)
    assert (results / run.key / "record.json").is_file()


@pytest.mark.slow
def test_a_job_of_two_runs_trains_both_side_by_side(tiny: dict[str, Path], tmp_path: Path) -> None:
    """runs_per_gpu 2 on submitit-local: one job, two runs in their own processes; each record is the one
    the study planned, and a second call finds nothing pending."""
    runs = plan(tiny, tmp_path / "runs", method="kd", variants=["default"], baselines=[], seeds=[0, 1])
    results, packed = tmp_path / "results", Resources(time_min=10, runs_per_gpu=2)
    again = dict(threads=2, folder=tmp_path / "submitit")
    outcomes, _ = executors.train_pending(runs, results, "submitit-local", packed, "test-pack", **again)
    assert [o.status for o in outcomes] == ["trained", "trained"], [o.message for o in outcomes]
    assert len(list((tmp_path / "submitit").glob("*_log.out"))) == 1  # one job
    for run in runs:
        assert read_record(results / run.key / "record.json")["config_id"] == run.config_id
        assert (run.out / "train.log").is_file()  # trained in a process of its own
    assert executors.train_pending(runs, results, "submitit-local", packed, "test-pack", **again) == ([], [])


def test_a_run_whose_default_is_the_fast_path_is_refused_before_ddp_tasks_are_submitted(
        tiny: dict[str, Path], tmp_path: Path, bf16_cpu: None) -> None:
    """On a CPU with bf16 units a run's default is the fast path, one process: split over two tasks it would
    be another configuration than the study planned: refused in one line, and nothing is submitted."""
    (run,) = plan(tiny, tmp_path / "runs", method="kd", variants=["default"], baselines=[], train_options={})
    two_tasks = Resources(time_min=10, tasks_per_node=2)
    with pytest.raises(ValueError, match=r"^with bf16 on CPU this run takes the fast path by default, which "
                                         r"runs in one process, not 2; pass --no-fast"):
        executors.train_pending([run], tmp_path / "results", "submitit-local", two_tasks, "test-ddp",
                                folder=tmp_path / "submitit")
    assert not (tmp_path / "submitit").exists()


def _kill_when_an_epoch_is_saved(out: Path, timeout_s: float = 300) -> None:
    """SIGKILL the training process (the pid in its run lock) once its record holds a finished epoch."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lock, record = out / ".lock", read_record(out / "record.json") or {}
        if record.get("history") and lock.exists() and lock.read_text().strip().isdigit():
            os.kill(int(lock.read_text()), signal.SIGKILL)
            return
        time.sleep(0.02)
    raise AssertionError(f"no epoch of {out} was saved within {timeout_s} s")


@pytest.mark.slow
def test_a_killed_job_is_resubmitted_and_resumes_to_the_uninterrupted_result(
        tiny: dict[str, Path], tmp_path: Path) -> None:
    kw = dict(method="kd", variants=["default"], baselines=[], epochs=30)
    (run,) = plan(tiny, tmp_path / "runs", **kw)
    results, resources = tmp_path / "results", Resources(time_min=10)
    auto = executors.make_executor("submitit-local", tmp_path / "submitit", resources, "test-kill")
    job = auto.submit(TrainJob((run,), threads=1))
    _kill_when_an_epoch_is_saved(run.out)
    (killed_outcome,) = executors._outcomes(job, (run,), results, executors.Progress(1, verbose=False))
    assert killed_outcome.status == "failed"
    killed = read_record(run.out / "record.json")
    assert killed["status"] == "running" and 1 <= len(killed["history"]) < 30, "the kill came too late"
    # the next call resubmits the run (its record is not completed), and the new job resumes from last.pt
    again = dict(threads=1, folder=tmp_path / "submitit")
    outcomes, _ = executors.train_pending([run], results, "submitit-local", resources, "test-kill", **again)
    assert [o.status for o in outcomes] == ["trained"], outcomes[0].message
    resumed = read_record(results / run.key / "record.json")
    assert resumed["resumes"][0]["after_epoch"] >= len(killed["history"])
    second = executors.train_pending([run], results, "submitit-local", resources, "test-kill", **again)
    assert second == ([], [])  # nothing pending: nothing submitted
    # an uninterrupted run of the same configuration, with the same thread count
    (straight,) = plan(tiny, tmp_path / "straight", **kw)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = train.train(straight.config)
    finally:
        torch.set_num_threads(threads)
    differ = sorted(k for k in {*resumed, *expected}
                    if k not in WALL_TIME and resumed.get(k) != expected.get(k))
    assert differ == ["out"] or differ == [], differ
