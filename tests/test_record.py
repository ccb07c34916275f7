"""A run's identity (kdlib.record): one function, from settings or records, with no git or hardware reads."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
from helpers import write_teacher

from kdlib import record as run_record
from kdlib.cli import build_parser
from kdlib.config import TrainConfig, from_args, plan, to_argv

REPO = Path(__file__).resolve().parents[1]
COMMITTED = sorted((REPO / "data").rglob("record.json"))


def test_there_are_committed_records() -> None:
    assert len(COMMITTED) >= 60


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.parent.relative_to(REPO / "data")))
def test_committed_config_ids_are_recomputed_from_their_records(path: Path) -> None:
    """Every committed record's ``config_id`` is the hash of its own settings, as the trainer computes it."""
    record = json.loads(path.read_text())
    assert run_record.config_id(record) == record["config_id"]


def test_identity_reads_neither_git_nor_the_machine(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    teacher = write_teacher(tmp_path / "t.pt", arch="resnet14", num_classes=10)
    config = TrainConfig("kd", "resnet8", "fashion_mnist", tmp_path / "o", teacher_ckpt=teacher,
                         recipe="smoke")

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the identity must not read git or the hardware")

    expected = run_record.config_id_of(config)
    monkeypatch.setattr(subprocess, "run", forbidden)
    monkeypatch.setattr(run_record, "hardware", forbidden)
    assert run_record.config_id_of(config) == expected


def test_settings_and_the_whole_record_give_one_identity(tmp_path: Path) -> None:
    teacher = write_teacher(tmp_path / "t.pt", arch="resnet14", num_classes=10)
    config = TrainConfig("cd", "resnet8", "fashion_mnist", tmp_path / "o", teacher_ckpt=teacher,
                         recipe="smoke", variant={"edt": "off"}, bn="frozen")
    p = plan(config)
    refs = run_record.resolve_refs(config, p.needs_teacher)
    settings = run_record.settings(p, *refs)
    record = run_record.new_record(p, *refs)
    assert settings.items() <= record.items()
    assert run_record.config_id(settings) == record["config_id"] == run_record.config_id_of(config)
    assert record["teacher"] == "resnet14" and record["teacher_ckpt"] == str(teacher)
    assert run_record.identity(record)["bn"] == "frozen"
    # what does not determine the result does not enter it
    moved = TrainConfig("cd", "resnet8", "fashion_mnist", tmp_path / "elsewhere", teacher_ckpt=teacher,
                        recipe="smoke", variant={"edt": "off"}, bn="frozen", workers=0, progress=False)
    assert run_record.config_id_of(moved) == record["config_id"]
    reseeded = TrainConfig("cd", "resnet8", "fashion_mnist", tmp_path / "o", teacher_ckpt=teacher,
                           recipe="smoke", variant={"edt": "off"}, bn="frozen", seed=1)
    assert run_record.config_id_of(reseeded) != record["config_id"]
    # another draw of the training images is another run; the default draw adds nothing to the identity
    redrawn = TrainConfig("cd", "resnet8", "fashion_mnist", tmp_path / "o", teacher_ckpt=teacher,
                          recipe="smoke", variant={"edt": "off"}, bn="frozen", subset_seed=1)
    assert run_record.config_id_of(redrawn) not in (record["config_id"], run_record.config_id_of(reseeded))
    assert record["subset_seed"] == 0 and "subset_seed" not in run_record.identity(record)


def test_the_fast_path_is_another_configuration(tmp_path: Path) -> None:
    """The fast path draws other batches (same distribution): its runs are told apart, so ``--resume`` never
    continues a run on the other path; reference-path runs keep the identity they always had."""
    teacher = write_teacher(tmp_path / "t.pt", arch="resnet14", num_classes=10)

    def config(**kw: object) -> TrainConfig:
        return TrainConfig("kd", "resnet8", "fashion_mnist", tmp_path / "o", teacher_ckpt=teacher,
                           recipe="smoke", device="cpu", precision="fp32", **kw)

    reference = run_record.new_record(plan(config()), *run_record.resolve_refs(config(), True))
    assert reference["data_path"] == "dataloader" and "data_path" not in run_record.identity(reference)
    assert plan(config()).fast is False and plan(config(fast=True)).fast is True
    assert run_record.config_id_of(config(fast=True)) != reference["config_id"]
    assert run_record.config_id_of(config(fast=False)) == reference["config_id"]


def test_provenance_names_the_cpu_its_flags_and_the_libraries(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Records carry the CPU's instruction-set flags, torch's dispatch capability and the oneDNN version:
    provenance, never identity; a machine without /proc/cpuinfo (macOS) records None instead of failing."""
    import torch

    hw = run_record.hardware(torch.device("cpu"))
    assert {"cpu", "cpu_flags", "cpu_capability", "torch_threads"} <= hw.keys()
    assert hw["cpu_flags"] is None or set(hw["cpu_flags"]) <= set(run_record.CPU_FLAGS)
    software = run_record.software()
    assert software["onednn"] is None or software["onednn"][0].isdigit()
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Intel Xeon\n"
                    "flags\t\t: fpu sse4_2 avx2 avx512f amx_bf16 xyz\n")
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: real(info if str(self) == "/proc/cpuinfo"
                                                                       else self, *a, **k))
    assert run_record._cpuinfo() == ("Intel Xeon", ["sse4_2", "avx2", "avx512f", "amx_bf16"])

    def missing(self: Path, *args: object, **kwargs: object) -> str:
        raise FileNotFoundError(self)

    monkeypatch.setattr(Path, "read_text", missing)
    assert run_record._cpuinfo() == (None, None)
    assert run_record.hardware(torch.device("cpu"))["cpu"]  # platform's name instead


def test_cpu_difference_names_model_and_instruction_sets() -> None:
    amd = {"cpu": "AMD EPYC", "cpu_flags": ["avx", "avx2", "fma"]}
    intel = {"cpu": "Intel Xeon", "cpu_flags": ["avx", "avx2", "fma", "avx512f", "avx512_bf16"]}
    assert run_record.cpu_difference(amd, dict(amd)) is None
    text = run_record.cpu_difference(amd, intel)
    assert "model 'AMD EPYC' in the record, 'Intel Xeon' here" in text
    assert "this one also has avx512_bf16, avx512f" in text
    fewer = run_record.cpu_difference({**amd, "cpu_flags": intel["cpu_flags"]}, amd)
    assert fewer == "instruction sets: the record's CPU also has avx512_bf16, avx512f"
    old = {"cpu": "AMD EPYC", "torch_threads": 2}  # a record made before flags were recorded
    assert run_record.cpu_difference(old, amd) is None
    assert "does not say its instruction sets" in run_record.cpu_difference(old, intel)
    assert run_record.cpu_difference(None, amd)


def test_a_validation_split_is_recorded_per_epoch_and_enters_the_identity_only_when_used(
        tmp_path: Path) -> None:
    """``val_subset``: each epoch's history has the validation top-1 beside the test top-1, the record keeps
    the last one and the hash of every split; a run without it keeps the ``config_id`` it always had."""
    from helpers import write_fashion_mnist

    from kdlib import train

    write_fashion_mnist(tmp_path / "data", train_per_class=10, test_per_class=4)
    teacher = write_teacher(tmp_path / "t.pt", arch="resnet14", num_classes=10)

    def config(out: str, **kw: object) -> TrainConfig:
        return TrainConfig("kd", "resnet8", "fashion_mnist", tmp_path / out, teacher_ckpt=teacher,
                           recipe="smoke", epochs=2, subset=40, batch_size=20, device="cpu", workers=0,
                           data_root=tmp_path / "data", download=False, **kw)

    record = train.train(config("val", val_subset=30))
    assert [{"top1", "val_top1", "val_top5"} <= h.keys() for h in record["history"]] == [True, True]
    assert record["val_top1_last"] == record["history"][-1]["val_top1"] and record["val_images"] == 30
    assert set(record["data_sha256"]) == {"train", "val", "test"} and record["data_sha256"]["val"]
    assert record["hardware"]["cpu_capability"] and "onednn" in record["software"]
    assert run_record.config_id(record) == record["config_id"] != run_record.config_id_of(config("plain"))
    plain = run_record.new_record(plan(config("plain")), *run_record.resolve_refs(config("plain"), True))
    assert "val_subset" not in run_record.identity(plain) and plain["val_subset"] is None


def test_a_rule_named_for_the_pair_puts_its_value_in_the_record(tmp_path: Path) -> None:
    """DKD's ``nckd_weight=mdistiller`` takes the pair's β in the run's plan: the record's settings hold the
    number, and the run is the one ``nckd_weight=2`` makes (same ``config_id``); the command line a study's
    subprocess gets carries the name and plans the same run."""
    teacher = tmp_path / "t.pth"
    teacher.write_bytes(b"a teacher")  # hashed into the identity; the plan loads nothing

    def config(**variant: object) -> TrainConfig:
        return TrainConfig("dkd", "resnet20", "cifar100", tmp_path / "o", teacher="resnet56",
                           teacher_ckpt=teacher, variant=dict(variant))

    named = config(nckd_weight="mdistiller")
    p = plan(named)
    settings = run_record.settings(p, *run_record.resolve_refs(named, p.needs_teacher))
    assert settings["method_config"]["nckd_weight"] == 2.0 and settings["variant"] == "nckd_weight=2.0"
    assert run_record.config_id(settings) == run_record.config_id_of(config(nckd_weight=2))
    assert run_record.config_id_of(config()) != run_record.config_id_of(named)  # β 8 is another run
    parsed = from_args(build_parser().parse_args(["train", *to_argv(named)]))
    assert parsed.variant == {"nckd_weight": "mdistiller"}
    assert run_record.config_id_of(parsed) == run_record.config_id(settings)
    with pytest.raises(ValueError, match="nckd_weight 'mdistiller' is set per teacher → student pair"):
        plan(dataclasses.replace(named, teacher=None))


def test_git_dirty_counts_changed_and_untracked_code_but_not_new_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       check=True, capture_output=True)

    (tmp_path / "kdlib").mkdir()
    (tmp_path / "kdlib" / "loss.py").write_text("A = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "code")
    monkeypatch.setattr(run_record, "REPO", tmp_path)
    commit, dirty = run_record.git_info()
    assert commit and len(commit) == 40 and dirty is False
    (tmp_path / "data" / "results").mkdir(parents=True)
    (tmp_path / "data" / "results" / "record.json").write_text("{}")
    assert run_record.git_info()[1] is False  # a record a study wrote and has not committed yet
    (tmp_path / "kdlib" / "new_loss.py").write_text("B = 2\n")
    assert run_record.git_info()[1] is True  # code the commit does not name
    (tmp_path / "kdlib" / "new_loss.py").unlink()
    (tmp_path / "kdlib" / "loss.py").write_text("A = 2\n")
    assert run_record.git_info()[1] is True
