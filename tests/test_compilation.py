"""What a run records about torch.compile (kdlib.compilation): the compile cache's folder, compile time and
cache hits, and whether CUDA graphs were used or skipped, in the words of ``CompiledOrEager.describe``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import write_fashion_mnist
from torch._inductor.cudagraph_utils import log_cudagraph_skip_and_bump_counter
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

from kdlib import compilation, train
from kdlib.compilation import CACHE_ENV, CompileWatch, cache_folder_name, cudagraph_state, use_compile_cache
from kdlib.fast import CompiledOrEager

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
XEON = {"cpu": "Intel(R) Xeon(R) Platinum 8480+", "cpu_flags": ["avx2", "avx512f", "amx_tile"]}


# --- the cache folder -------------------------------------------------------------------------------------
def test_the_cache_folder_is_the_users_where_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert use_compile_cache(XEON) == tmp_path / "mine"
    assert os.environ[CACHE_ENV] == str(tmp_path / "mine")


@pytest.mark.parametrize("unset", ["deleted", "empty", "torch's default"])
def test_the_cache_folder_defaults_to_one_per_kind_of_cpu_under_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, unset: str
) -> None:
    """Unset, empty, or torch's default (which importing torch._dynamo writes there): runs/compile_cache/."""
    if unset == "deleted":
        monkeypatch.delenv(CACHE_ENV, raising=False)
    else:
        monkeypatch.setenv(CACHE_ENV, "" if unset == "empty" else default_cache_dir())
    monkeypatch.setattr(compilation, "COMPILE_CACHE_DIR", tmp_path / "compile_cache")
    folder = use_compile_cache(XEON)
    assert folder == tmp_path / "compile_cache" / cache_folder_name(XEON["cpu"], XEON["cpu_flags"])
    assert os.environ[CACHE_ENV] == str(folder)
    assert folder.name.startswith("intel-r-xeon-r-platinum-8480-")


def test_one_cache_folder_per_model_and_instruction_sets() -> None:
    name = cache_folder_name(XEON["cpu"], XEON["cpu_flags"])
    assert cache_folder_name(XEON["cpu"], list(reversed(XEON["cpu_flags"]))) == name  # order: irrelevant
    assert cache_folder_name(XEON["cpu"], ["avx2"]) != name  # the same model with other flags (a VM)
    assert cache_folder_name("AMD EPYC 7B13", XEON["cpu_flags"]) != name
    assert cache_folder_name(None, None).startswith("unknown-cpu-")


def test_the_trainer_sets_the_cache_folder_before_it_compiles(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    """``TORCHINDUCTOR_CACHE_DIR`` is set when the trainer wires its (compiled) forward; an eager run records
    no compilation."""
    write_fashion_mnist(tmp_path / "data", train_per_class=4, test_per_class=2)
    monkeypatch.setenv(CACHE_ENV, default_cache_dir())  # as torch._dynamo's import leaves it
    monkeypatch.setattr(compilation, "COMPILE_CACHE_DIR", tmp_path / "compile_cache")
    seen = []
    original = train.prepare_fast

    def prepare_fast(*args, **kwargs):
        seen.append(os.environ.get(CACHE_ENV))
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "prepare_fast", prepare_fast)
    record = train.train(train.TrainConfig(
        method="ce", student="resnet8", dataset="fashion_mnist", out=tmp_path / "run", recipe="smoke",
        epochs=1, subset=20, eval_subset=10, batch_size=10, data_root=tmp_path / "data", workers=0,
        download=False, progress=False, fast=True, compile=False, precision="fp32"))
    name = cache_folder_name(record["hardware"]["cpu"], record["hardware"]["cpu_flags"])
    assert seen == [str(tmp_path / "compile_cache" / name)]
    assert record["speed"]["forward"] == "eager" and record["speed"]["compile"] is None


# --- CUDA graphs ------------------------------------------------------------------------------------------
def test_cudagraph_state_in_words() -> None:
    used = {"skips": 0, "log": "", "nodes": 2}
    assert cudagraph_state(CUDA, used) == "used (2 graphs recorded)"
    logged = {"skips": 1, "log": "skipping cudagraphs due to mutated inputs (1 instances)", "nodes": 0}
    assert cudagraph_state(CUDA, logged) == "skipped: mutated inputs (1 instances)"
    partly = cudagraph_state(CUDA, {**logged, "nodes": 1})  # e.g. the backward's graph only
    assert partly == "skipped: mutated inputs (1 instances) (1 graphs recorded)"
    assert cudagraph_state(CUDA, {**logged, "skips": 0}).startswith("skipped: mutated")  # the log line alone
    silent = {"skips": 1, "log": "", "nodes": 0}  # inductor counts CPU graphs' skips without logging
    assert cudagraph_state(CPU, silent) == "skipped: no reason logged (1 counted; the inputs are on the cpu)"
    assert cudagraph_state(CUDA, silent) == "skipped: no reason logged (1 counted)"
    assert cudagraph_state(CPU, used) == "not applicable (cpu)"
    assert cudagraph_state(CUDA, {**used, "nodes": 0}) == "unknown (no graph recorded, no skip logged)"
    assert cudagraph_state(CUDA, {**used, "nodes": None}).startswith("unknown")


def _skipping_backend(graph: torch.fx.GraphModule, example_inputs: list, **options: object) -> object:
    """A backend that skips CUDA graphs as inductor does: torch's own counter and log line."""
    log_cudagraph_skip_and_bump_counter("skipping cudagraphs due to mutated inputs (1 instances)")
    return graph.forward


def test_describe_gives_torchs_reason_for_skipping_cuda_graphs() -> None:
    forward = CompiledOrEager(lambda x: x * 2, mode="reduce-overhead", backend=_skipping_backend)
    assert forward.describe() == "compiled (reduce-overhead)"  # nothing observed yet
    for _ in range(compilation.CUDAGRAPH_STEPS + 1):
        assert torch.equal(forward(torch.ones(3)), torch.full((3,), 2.0))
    said = "compiled (reduce-overhead, CUDA graphs skipped: mutated inputs (1 instances))"
    assert forward.describe() == said
    log_cudagraph_skip_and_bump_counter("skipping cudagraphs due to a later step")  # after the steps observed
    assert forward.describe() == said
    without_graphs = CompiledOrEager(lambda x: x * 2, backend=_skipping_backend)  # mode None: no CUDA graphs
    without_graphs(torch.ones(3))
    assert without_graphs.describe() == "compiled (default)"


def test_cuda_graphs_used_are_named_with_their_count(monkeypatch: pytest.MonkeyPatch) -> None:
    watch = CompileWatch(cudagraphs=True)
    assert watch.cudagraphs() is None
    with watch.call(CUDA):
        pass
    monkeypatch.setattr(compilation, "recorded_cudagraph_nodes", lambda device: 2)
    assert watch.cudagraphs() == "used (2 graphs recorded)"
    assert CompileWatch(cudagraphs=False).cudagraphs() is None


# --- compile time and caches ------------------------------------------------------------------------------
def test_compile_time_counts_the_calls_that_compile() -> None:
    def counting_backend(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        compiled.append(len(example_inputs[0]))
        return graph.forward

    compiled: list[int] = []
    forward = CompiledOrEager(lambda x: x + 1, backend=counting_backend)
    assert forward.compile_record() is None  # no call yet
    forward(torch.ones(3))
    first = forward.compile_record()
    for _ in range(3):
        forward(torch.ones(3))
    assert forward.compile_record()["seconds"] == first["seconds"] > 0 and first["frames"] == 1
    forward(torch.ones(5))  # a new static shape: dynamo compiles again
    assert forward.compile_record()["frames"] == 2 and compiled == [3, 5]
    assert forward.compile_record()["cache_dir"] == compilation.relative(os.environ[CACHE_ENV])
    assert CompiledOrEager(lambda x: x, enabled=False).compile_record() is None


@pytest.mark.slow
def test_a_second_compilation_loads_the_graphs_from_the_caches(tmp_path: Path) -> None:
    """Inductor on this CPU, twice, in an empty cache folder: the first compiles (misses), the second loads
    (hits, no miss, in far less time). With ``reduce-overhead`` on CPU tensors inductor counts a CUDA-graph
    skip without logging a reason; the record says so."""
    weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, 8))
    x = torch.linspace(-1, 1, 8)
    records = []
    with torch._inductor.utils.fresh_cache(dir=str(tmp_path)):
        for _ in range(2):
            forward = CompiledOrEager(lambda x: (x * weight).sin().sum(), mode="reduce-overhead")
            for _ in range(2):
                forward(x).backward()
            assert forward.is_compiled
            assert forward.describe() == ("compiled (reduce-overhead, CUDA graphs skipped: no reason logged "
                                          "(1 counted; the inputs are on the cpu))")
            records.append(forward.compile_record())
    cold, warm = records
    assert cold["fx_graph_cache_misses"] >= 1 and cold["aot_autograd_cache_misses"] == 1
    assert cold["fx_graph_cache_hits"] == cold["aot_autograd_cache_hits"] == 0
    assert warm["aot_autograd_cache_hits"] == 1 and warm["fx_graph_cache_hits"] >= 1
    assert warm["fx_graph_cache_misses"] == warm["aot_autograd_cache_misses"] == 0
    assert warm["seconds"] < cold["seconds"] / 2
    assert cold["cache_dir"] == warm["cache_dir"] and Path(cold["cache_dir"]).parent == tmp_path.resolve()
