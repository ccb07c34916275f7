"""Shared test settings: deterministic, single-threaded torch (CI has 2 cores), no user data root, torch's
compile cache outside the repository, and the CPU's bf16 units as a test chooses them.

What ``--precision auto`` resolves to, and so the default path (fast, channels_last, compiled for long runs),
depends on the CPU: bf16 where it has AVX512-BF16 or AMX, fp32 elsewhere (:func:`kdlib.fast.bf16_native`).
A test that depends on that answer asks for one (``bf16_cpu``, ``plain_cpu``) or for both (``cpu_kind``);
``pytest --cpu-kind avx2|amx`` reports the other kind of CPU to every other test, to see the suite's outcome
on the other kind of machine from this one (in this process: subprocesses see the real CPU, so the tests that
start them say which precision they mean).
"""

import os

import pytest
import torch
from torch._inductor.runtime import cache_dir_utils

#: What torch's CPU kernels dispatch on, as each kind of CPU answers.
CPU_KINDS = {
    "avx2": {"_is_amx_tile_supported": False, "_is_avx512_bf16_supported": False},
    "amx": {"_is_amx_tile_supported": True, "_is_avx512_bf16_supported": True},
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cpu-kind", choices=("native", *CPU_KINDS), default="native",
                     help="report this process's CPU to the tests as one without bf16 units (avx2) or with "
                          "AMX (amx); default: as it is")


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(int(os.environ.get("KDLIB_TEST_THREADS", "1")))
    # the trainer's compile cache is runs/compile_cache/ unless this is set (to other than torch's default):
    # the tests' runs, and the subprocesses they start, compile into a temporary folder beside torch's default
    default = cache_dir_utils.default_cache_dir()
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR", default) in ("", default):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = default + "_kdlib_tests"
    torch.use_deterministic_algorithms(True, warn_only=True)


def fake_cpu(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """This process's CPU reported as ``kind`` (a key of :data:`CPU_KINDS`)."""
    for name, answer in CPU_KINDS[kind].items():
        monkeypatch.setattr(torch.cpu, name, lambda answer=answer: answer)


@pytest.fixture(autouse=True)
def _seed_and_cpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    kind = request.config.getoption("--cpu-kind")
    if kind != "native":
        fake_cpu(monkeypatch, kind)


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's CPU reported as one with AMX and AVX512-BF16."""
    fake_cpu(monkeypatch, "amx")


@pytest.fixture
def plain_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's CPU reported as one without bf16 units (AVX2 only)."""
    fake_cpu(monkeypatch, "avx2")


@pytest.fixture(params=list(CPU_KINDS))
def cpu_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each kind of CPU in turn: the test runs under both answers of the bf16 detection."""
    fake_cpu(monkeypatch, request.param)
    return request.param
