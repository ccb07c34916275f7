"""What ``torch.compile`` did in a run: where its caches live, how long it compiled, whether the caches hit,
and whether CUDA graphs were used or skipped. Read from torch 2.14's source (paths below are under
``torch/``).

**Caches across runs.** Inductor keeps compiled graphs on disk: the FX graph cache
(``torch._inductor.config.fx_graph_cache``, environment ``TORCHINDUCTOR_FX_GRAPH_CACHE``) and the AOTAutograd
cache (``torch._functorch.config.enable_autograd_cache``, ``TORCHINDUCTOR_AUTOGRAD_CACHE``), both on by
default, and the C++ and Triton kernels they load, all under ``TORCHINDUCTOR_CACHE_DIR``
(``_inductor/runtime/cache_dir_utils.py: cache_dir``; default ``<tempdir>/torchinductor_<user>``, node-local
on a cluster and lost with the machine). torch writes its default into the environment as soon as
``torch._dynamo`` is imported (``_dynamo/package.py`` places its precompile cache there at import; torchvision
imports dynamo), so a value equal to the default is taken to be torch's, not the user's. The FX graph and
AOTAutograd caches read the variable at each lookup (``FxGraphCache._get_tmp_dir``,
``AOTAutogradCache._get_tmp_dir``), and a few paths are kept from their first use
(``CacheBase.get_local_cache_path``): it must be set after the imports, before the process's first
compilation. :func:`use_compile_cache`, called by the trainer before it builds anything, sets it to
``runs/compile_cache/<cpu>/`` (:data:`kdlib.paths.COMPILE_CACHE_DIR`, git-ignored) unless the user set it, so
subprocess runs and Slurm jobs on a shared file system reuse each other's graphs (torch writes entries
atomically and takes file locks). One folder per kind of CPU (model name and instruction-set flags): inductor
generates C++ kernels for the compiling CPU's vector ISA (``_inductor/codegen/cpp.py``: ``pick_vec_isa()``),
which the FX graph cache key (``_inductor/codecache.py: FxGraphHashDetails``) does not name; a GPU's name is
in it (``CacheBase.get_system``). The keys hold the graph, the inputs' shapes, dtypes and strides, torch's
source hash, inductor's configuration and the thread count of CPU kernels, not the weights: another seed of
the same configuration hits.

**Compile time and cache use** (:class:`CompileWatch`): the wall time of the calls during which dynamo
compiled a frame (its ``counters["frames"]["total"]`` grew: tracing, AOTAutograd and inductor for the forward
and the backward graph, or their loading from the caches, and that step's own execution), and the increase of
torch's cache counters (:data:`CACHE_COUNTERS`, ``torch._dynamo.utils.counters``).

**CUDA graphs** (``mode="reduce-overhead"``): where inductor cannot use them it skips them, adds one to
``counters["inductor"]["cudagraph_skips"]`` and, for a graph on a GPU, logs ``skipping cudagraphs due to
<reason>`` under ``torch._inductor`` (:data:`CUDAGRAPH_LOGGERS`; ``_inductor/cudagraph_utils.py:
log_cudagraph_skip_and_bump_counter``); for CPU tensors it only counts (``_inductor/output_code.py``). Where
it uses them, the graphs recorded are the nodes of its CUDA-graph trees (``_inductor/cudagraph_trees.py``,
private: read defensively). :func:`cudagraph_state` says which, in words. Counters and log are process-wide,
so one compiled function is observed at a time.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch._dynamo.utils import counters
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

from kdlib.paths import COMPILE_CACHE_DIR, relative

#: The environment variable that places inductor's on-disk caches (``cache_dir_utils.cache_dir``).
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
#: Each of torch's cache counters as ``(record key, counter group, counter key)``, the record key being its
#: name in a run record.
CACHE_COUNTERS = (
    ("fx_graph_cache_hits", "inductor", "fxgraph_cache_hit"),
    ("fx_graph_cache_misses", "inductor", "fxgraph_cache_miss"),
    ("fx_graph_cache_bypasses", "inductor", "fxgraph_cache_bypass"),
    ("aot_autograd_cache_hits", "aot_autograd", "autograd_cache_hit"),
    ("aot_autograd_cache_misses", "aot_autograd", "autograd_cache_miss"),
    ("aot_autograd_cache_bypasses", "aot_autograd", "autograd_cache_bypass"),
)
#: Compiled calls over which :class:`CompileWatch` gathers the CUDA-graph skips and log lines: inductor's
#: CUDA-graph trees run a graph once (warm-up) before they record it, and replay it after.
CUDAGRAPH_STEPS = 3


# --- the cache folder -------------------------------------------------------------------------------------
def cache_folder_name(cpu: str | None, cpu_flags: Sequence[str] | None) -> str:
    """``<cpu model>-<hash of its flags>``, e.g. ``intel-r-xeon-r-platinum-8480-3f2a9c1e``: one cache folder
    per kind of CPU (inductor's C++ kernels are generated for the compiling CPU's instruction set)."""
    model = re.sub(r"[^a-z0-9]+", "-", (cpu or "unknown cpu").lower()).strip("-")[:60]
    digest = hashlib.sha256(" ".join(sorted(cpu_flags or ())).encode()).hexdigest()[:8]
    return f"{model}-{digest}"


def use_compile_cache(hardware: Mapping[str, Any]) -> Path:
    """The folder of inductor's on-disk caches for this process: ``TORCHINDUCTOR_CACHE_DIR`` where it is set
    to anything but torch's default (which torch itself writes there when ``torch._dynamo`` is imported), else
    ``runs/compile_cache/<cpu>/`` (:func:`cache_folder_name` of ``hardware``'s ``cpu`` and ``cpu_flags``, as
    :func:`kdlib.record.hardware` gives them), which this sets. Call it before the process's first
    compilation."""
    given = os.environ.get(CACHE_ENV)
    if given and os.path.abspath(given) != os.path.abspath(default_cache_dir()):
        return Path(given)
    folder = COMPILE_CACHE_DIR / cache_folder_name(hardware.get("cpu"), hardware.get("cpu_flags"))
    os.environ[CACHE_ENV] = str(folder)
    return folder


def cache_counts() -> dict[str, int]:
    """torch's cache counters now, by their record names (:data:`CACHE_COUNTERS`)."""
    return {name: counters[group].get(key, 0) for name, group, key in CACHE_COUNTERS}


# --- CUDA graphs ------------------------------------------------------------------------------------------
def recorded_cudagraph_nodes(device: torch.device) -> int | None:
    """Recorded graphs (nodes) in this thread's CUDA-graph trees for ``device``; None where unknown."""
    def count(nodes: list) -> int:
        return sum(1 + count([c for cs in n.children.values() for c in cs]) for n in nodes)

    try:  # a private API: another torch may lay it out otherwise
        from torch._inductor import cudagraph_trees
        manager = cudagraph_trees.get_manager(device.index or 0, create_if_none_exists=False)
        return 0 if manager is None else count([n for ns in manager.roots.values() for n in ns])
    except Exception:
        return None


class _CudagraphLines(logging.Handler):
    """torch's log lines from INFO up that mention cudagraphs (its skips are WARNINGs), numbered, the last 100
    kept (:func:`_cudagraph_lines`). Not DEBUG: torch's structured trace logs its payloads there."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0
        self.lines: collections.deque[tuple[int, str]] = collections.deque(maxlen=100)

    def emit(self, record: logging.LogRecord) -> None:
        message = " ".join(record.getMessage().split())
        if "cudagraph" in message.lower():
            self.count += 1
            self.lines.append((self.count, message[:300]))

    def since(self, count: int) -> list[str]:
        """The distinct lines after the ``count``-th, in order."""
        return list(dict.fromkeys(line for number, line in self.lines if number > count))


#: The loggers that hear torch's cudagraph lines. torch registers these with ``propagate = False``
#: (``_logging/_internal.py: _reset_logs``), so a line logged under ``torch._inductor`` (the skips, from
#: ``torch._inductor.cudagraph_utils.__cudagraphs``) never reaches the ``torch`` logger.
CUDAGRAPH_LOGGERS = ("torch", "torch._dynamo", "torch._inductor", "torch._inductor.cudagraph_trees")


@functools.cache
def _cudagraph_lines() -> _CudagraphLines:
    """The one handler, added once to each of :data:`CUDAGRAPH_LOGGERS` (torch's reconfiguration of its logs
    removes only its own handlers)."""
    handler = _CudagraphLines()
    for name in CUDAGRAPH_LOGGERS:
        logging.getLogger(name).addHandler(handler)
    return handler


class CudagraphWatch:
    """inductor's CUDA-graph skips and torch's cudagraph log lines since this was made, and the graphs
    recorded for ``device`` (:meth:`info`)."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.lines = _cudagraph_lines()
        self.lines_before = self.lines.count
        self.skips_before = counters["inductor"].get("cudagraph_skips", 0)

    def info(self) -> dict[str, Any]:
        """``skips`` (the counter's increase), ``log`` (the lines, ``" | "``-joined) and ``nodes``."""
        return {"skips": counters["inductor"].get("cudagraph_skips", 0) - self.skips_before,
                "log": " | ".join(self.lines.since(self.lines_before))[:600],
                "nodes": recorded_cudagraph_nodes(self.device)}


@contextlib.contextmanager
def watch_cudagraphs(device: torch.device) -> Iterator[dict[str, Any]]:
    """Within the block: the dict, filled at its end with :meth:`CudagraphWatch.info`."""
    watch, info = CudagraphWatch(device), {}
    try:
        yield info
    finally:
        info.update(watch.info())


def cudagraph_state(device: torch.device, info: Mapping[str, Any]) -> str:
    """CUDA graphs, in words, from a :meth:`CudagraphWatch.info`: ``skipped: <torch's reason>`` (the text
    after ``skipping cudagraphs due to``; a count where torch logged none), with the graphs recorded all the
    same (e.g. the backward only); ``not applicable (cpu)`` off CUDA with no skip; ``used (N graphs
    recorded)``; else ``unknown (...)``."""
    skipped = [m for m in info["log"].split(" | ") if "skipping cudagraphs" in m.lower()]
    if info["skips"] or skipped:
        if skipped:
            reason = re.sub(r"(?i)^.*?skipping cudagraphs(?: due to)?:?\s*", "", skipped[0]) or skipped[0]
        else:
            on_cpu = "; the inputs are on the cpu" if device.type == "cpu" else ""
            reason = f"no reason logged ({info['skips']} counted{on_cpu})"
        return f"skipped: {reason}" + (f" ({info['nodes']} graphs recorded)" if info["nodes"] else "")
    if device.type != "cuda":
        return f"not applicable ({device.type})"
    if info["nodes"]:
        return f"used ({info['nodes']} graphs recorded)"
    return "unknown (no graph recorded, no skip logged)"


def cudagraph_verdict(device: torch.device, forward: Any, info: Mapping[str, Any]) -> str:
    """:func:`cudagraph_state`, or ``not used (<how forward ran>)`` where ``forward`` (a
    :class:`kdlib.fast.CompiledOrEager`) is not compiled."""
    if not forward.is_compiled:
        return f"not used ({forward.describe()})"
    return cudagraph_state(device, info)


# --- one compiled function --------------------------------------------------------------------------------
class CompileWatch:
    """Compile time and cache use of one compiled function since this was made (:meth:`record`), and with
    ``cudagraphs`` whether its CUDA graphs were used, over its first :data:`CUDAGRAPH_STEPS` compiled calls
    and everything between them, backward passes included (:meth:`cudagraphs`)."""

    def __init__(self, *, cudagraphs: bool) -> None:
        self.before = cache_counts()
        self.cudagraphs_expected = cudagraphs
        self.seconds = 0.0
        self.frames = 0
        self.calls = 0
        self._watch: CudagraphWatch | None = None
        self._settled: dict[str, Any] | None = None

    @contextlib.contextmanager
    def call(self, device: torch.device) -> Iterator[None]:
        """Around one compiled call with inputs on ``device``: timed where dynamo compiles in it."""
        if self.cudagraphs_expected and self.calls == 0:
            self._watch = CudagraphWatch(device)
        elif self._watch is not None and self.calls == CUDAGRAPH_STEPS and self._settled is None:
            self._settled = self._watch.info()
        self.calls += 1
        frames, tick = counters["frames"].get("total", 0), time.perf_counter()
        try:
            yield
        finally:
            compiled = counters["frames"].get("total", 0) - frames
            if compiled:
                self.seconds += time.perf_counter() - tick
                self.frames += compiled

    def cudagraphs(self) -> str | None:
        """:func:`cudagraph_state` of the observed calls; None without CUDA graphs or before the first
        call."""
        if self._watch is None:
            return None
        return cudagraph_state(self._watch.device, self._settled or self._watch.info())

    def record(self) -> dict[str, Any] | None:
        """``seconds`` compiling, ``frames`` compiled, each cache counter's increase and ``cache_dir``
        (relative to the repository when inside it), for the run record; None before the first call."""
        if not self.calls:
            return None
        now = cache_counts()
        folder = os.environ.get(CACHE_ENV)
        return {"seconds": round(self.seconds, 3), "frames": self.frames,
                **{name: now[name] - self.before[name] for name in now},
                "cache_dir": relative(folder) if folder else None}
