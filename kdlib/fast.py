"""The fast path: the dataset resident on the device, augmented there, and a step without host syncs.

airbench's recipe for speed without changing the training recipe (conventions.md): the same batch size,
optimiser, schedule, augmentation distribution and normalisation as the DataLoader path of
:mod:`kdlib.data`, which stays the reference. This module holds the parts that do not depend on the trainer:

- :class:`DeviceLoader`: images (``uint8``, or float in [0, 1]) and labels stored once on the device as
  ``(N, H, W, C)``; each epoch a seeded permutation, and for training a per-image random crop with padding
  (any of kdlib's pad modes) and horizontal flip done with one batched gather on the device
  (:func:`crop_flip`), then ``ToTensor`` + ``Normalize`` arithmetic (:func:`to_model_input`), yielding
  ``(x, y)`` batches, ``x`` in channels_last if asked;
- :class:`DeviceMetrics`: the named loss terms of every step kept on the device and read once per epoch
  (one host sync);
- :class:`CompiledOrEager`: ``torch.compile`` (CUDA graphs with ``mode="reduce-overhead"``) that falls back
  to eager execution when compilation is unavailable or fails;
- :func:`run_teacher_in_inference_mode`: the teacher's forward under ``torch.inference_mode``;
  :func:`cast_teacher_weights`: the frozen teacher's weights in bf16 once, not at every autocast call.

**Same distribution, not the same draws.** torchvision's ``RandomCrop(size, padding=p, padding_mode=m)`` +
``RandomHorizontalFlip()`` draws, per image and independently, a row offset and a column offset into the
padded image, each uniform on ``{0, ..., 2p}``, and a flip with probability 1/2 (``torch.rand(1) < 0.5``). The
fast path draws the same for every image of an epoch at once, from a CPU generator seeded by the epoch seed
(so an epoch is a function of the seed alone, on any device), in the order: permutation, row offsets, column
offsets, flips. The reference path seeds every sample separately (:class:`kdlib.data.SeededTransform`);
:func:`reference_draws` reproduces its draws, so the tests can compare the two paths on identical batches.
For a given (offset, flip) the pixels are those of torchvision's pad → crop → flip, bit for bit (tested for
every offset, both flips and all four pad modes), and normalisation does the same float operations in the
same order (``x / 255``, ``- mean``, ``/ std``), so identical draws give identical tensors.

Smaller stored images are zero-padded to the dataset's input size once, at load time, as the Fashion-MNIST
transform's ``Pad(2)`` does before the crop; one grey channel is repeated to the input's channel count, as
``Grayscale(num_output_channels=3)`` does.
"""

from __future__ import annotations

import functools
import logging
import math
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdlib.compilation import CompileWatch
from kdlib.data import PAD_MODES, DatasetSpec, SeededTransform, mix_seed
from kdlib.distill import last_map

log = logging.getLogger(__name__)

#: ``TrainConfig.precision``: ``auto`` resolves to one of the other two (:func:`resolve_precision`).
PRECISIONS = ("auto", "bf16", "fp32")


# --- augmentation as tensor ops --------------------------------------------------------------------
def source_index(position: Tensor, length: int, pad_mode: str) -> tuple[Tensor, Tensor | None]:
    """Where position ``position`` of an axis padded by ``pad_mode`` reads from the unpadded axis.

    ``position`` counts from the first pixel of the unpadded axis (so it is negative in the leading
    padding and ``>= length`` in the trailing padding). Returns the source index, always in
    ``[0, length)``, and for ``constant`` padding a mask that is False where the pixel is padding (it holds
    zero). The modes are NumPy's and torchvision's: ``edge`` repeats the border pixel, ``reflect`` mirrors
    without repeating it (``d c b | a b c d | c b a``), ``symmetric`` mirrors repeating it
    (``c b a | a b c d | d c b``); one reflection suffices for padding of at most ``length - 1``.
    """
    last = length - 1
    if pad_mode == "constant":
        valid = (position >= 0) & (position <= last)
        return position.clamp(0, last), valid
    if pad_mode == "edge":
        return position.clamp(0, last), None
    if pad_mode == "reflect":
        index = position.abs()
        return torch.where(index > last, 2 * last - index, index), None
    if pad_mode == "symmetric":
        index = torch.where(position < 0, -position - 1, position)
        return torch.where(index > last, 2 * length - 1 - index, index), None
    raise ValueError(f"invalid pad_mode '{pad_mode}'; choose one of: {', '.join(PAD_MODES)}")


def crop_flip(
    images: Tensor,
    index: Tensor,
    top: Tensor,
    left: Tensor,
    flip: Tensor,
    *,
    pad: int = 4,
    pad_mode: str = "constant",
    size: tuple[int, int] | None = None,
) -> Tensor:
    """Random-crop-with-padding and horizontal flip of ``images[index]`` in one gather: ``(B, h, w, C)``.

    ``images`` is ``(N, H, W, C)`` (any dtype); ``top``/``left`` are each image's offsets into the padded
    image (``0 .. H + 2·pad - h``), ``flip`` whether to mirror the crop; all three are ``(B,)`` on the
    device of ``images``. Equal to torchvision's ``hflip(crop(pad(image, pad, fill=0, padding_mode), top,
    left, h, w))`` (pad fill is zero, as in ``RandomCrop``'s default). Output size ``size`` defaults to
    ``(H, W)``.
    """
    if pad_mode in ("reflect", "symmetric") and pad >= min(images.shape[1:3]):
        raise ValueError(f"pad {pad} too large for {pad_mode} padding of {tuple(images.shape[1:3])} images")
    height, width, channels = images.shape[1:]
    h, w = size if size is not None else (height, width)
    rows = top[:, None] + torch.arange(h, device=top.device) - pad  # (B, h), positions in the unpadded image
    cols = left[:, None] + torch.arange(w, device=left.device) - pad  # (B, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # mirroring a crop = reading its columns backwards
    rows, row_ok = source_index(rows, height, pad_mode)
    cols, col_ok = source_index(cols, width, pad_mode)
    pixel = (index[:, None, None] * height + rows[:, :, None]) * width + cols[:, None, :]  # (B, h, w)
    pixels = images.reshape(-1, channels).index_select(0, pixel.reshape(-1)).view(len(index), h, w, channels)
    if row_ok is not None and col_ok is not None:
        pixels = pixels.masked_fill(~(row_ok[:, :, None] & col_ok[:, None, :])[..., None], 0)
    return pixels


#: ``v / 255`` for every uint8 value ``v``, divided on the CPU as ``ToTensor`` does. CUDA computes
#: ``x.div_(255)`` as ``x * (1/255)``, one ulp off for 126 of the 256 values; a lookup is exact anywhere.
UINT8_TO_UNIT = torch.arange(256, dtype=torch.float32) / 255


@functools.cache
def unit_table(device: torch.device) -> Tensor:
    """:data:`UINT8_TO_UNIT` on ``device``, copied there once: a copy per batch would make the host wait for
    the GPU (a pageable host-to-device copy synchronises)."""
    return UINT8_TO_UNIT.to(device)


def to_model_input(
    pixels: Tensor, mean: Tensor, std: Tensor, *, channels: int | None = None, channels_last: bool = False
) -> Tensor:
    """``(B, H, W, C)`` pixels → normalised ``(B, C, H, W)`` float32, as ``ToTensor`` + ``Normalize``.

    ``uint8`` pixels are divided by 255 (looked up in :data:`UINT8_TO_UNIT`; float pixels are taken to be in
    [0, 1] already), then ``(x - mean) / std`` per channel (``mean``/``std``: float32 tensors of shape
    ``(C,)``); the same operations in the same order as torchvision, so the results are bit-identical. One
    stored channel is repeated to ``channels``. The result is channels_last in memory when ``channels_last``,
    else contiguous.
    """
    x = pixels.permute(0, 3, 1, 2)  # NCHW view of NHWC memory: already channels_last
    if channels is not None and x.shape[1] != channels:
        if x.shape[1] != 1:
            raise ValueError(f"cannot make {channels} channels from {x.shape[1]}")
        x = x.expand(-1, channels, -1, -1)
    # the layout first (on the small integers), then float arithmetic in place on a fresh tensor
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=layout)
    if pixels.dtype == torch.uint8:  # x / 255 looked up in a table the CPU divided: the same on any device
        x = unit_table(x.device)[x.long()].contiguous(memory_format=layout)
    else:
        x = x.to(torch.float32, copy=True)
    return x.sub_(mean[:, None, None]).div_(std[:, None, None])


def draw_augmentation(n: int, pad: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` independent draws ``(top, left, flip)``: offsets uniform on ``0..2·pad``, flips with p = 1/2."""
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return top, left, flip


def reference_draws(epoch_seed: int, indices: Sequence[int], pad: int = 4) -> tuple[Tensor, Tensor, Tensor]:
    """The ``(top, left, flip)`` that the reference path draws for dataset indices ``indices`` in an epoch.

    :class:`kdlib.data.SeededTransform` seeds torch with ``mix_seed(epoch_seed, index)`` before each sample's
    transform; ``RandomCrop`` then draws the row offset and the column offset (``torch.randint(0, 2·pad + 1)``
    each, on the padded image) and ``RandomHorizontalFlip`` draws ``torch.rand(1) < 0.5``. One seeding per
    image makes this slow (tests only).
    """
    generator = torch.Generator()
    draws = []
    for index in indices:
        generator.manual_seed(mix_seed(epoch_seed, int(index)))
        top = int(torch.randint(0, 2 * pad + 1, (1,), generator=generator))
        left = int(torch.randint(0, 2 * pad + 1, (1,), generator=generator))
        draws.append((top, left, bool(torch.rand(1, generator=generator) < 0.5)))
    top, left, flip = zip(*draws, strict=True) if draws else ((), (), ())
    return torch.tensor(top, dtype=torch.int64), torch.tensor(left, dtype=torch.int64), torch.tensor(flip)


# --- the device-resident loader --------------------------------------------------------------------
def dataset_arrays(dataset: Any, input_shape: tuple[int, int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Raw ``(N, H, W, C)`` pixels and ``(N,)`` int64 labels of a kdlib or torchvision dataset.

    Takes a :class:`kdlib.data.SeededTransform` (its base's ``data``/``targets`` at its ``indices``) or a
    torchvision-style dataset with ``data`` (CIFAR's ``(N, H, W, C)`` array, MNIST's ``(N, H, W)`` tensor)
    and ``targets``. Images smaller than ``input_shape`` are zero-padded centrally to it (Fashion-MNIST's
    ``Pad(2)``), as the dataset's transforms do before the random crop.
    """
    if isinstance(dataset, SeededTransform):
        base, indices = dataset.base, dataset.indices
    else:
        base, indices = dataset, None
    if not hasattr(base, "data") or not hasattr(base, "targets"):
        raise TypeError(f"{type(base).__name__} has no 'data' and 'targets' to keep on the device")
    pixels = torch.as_tensor(np.asarray(base.data))
    labels = torch.as_tensor(np.asarray(base.targets), dtype=torch.int64)
    if indices is not None:
        index = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        pixels, labels = pixels[index], labels[index]
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    if input_shape is not None:
        (height, width), (want_h, want_w) = pixels.shape[1:3], input_shape[1:]
        dh, dw = want_h - height, want_w - width
        if dh < 0 or dw < 0 or dh % 2 or dw % 2:
            raise ValueError(f"cannot pad {height}x{width} images centrally to {want_h}x{want_w}")
        if dh or dw:
            pixels = torch.nn.functional.pad(pixels, (0, 0, dw // 2, dw // 2, dh // 2, dh // 2))
    return pixels.contiguous(), labels


class DeviceLoader:
    """Batches ``(x, y)`` from images and labels held on ``device``; a drop-in for the training DataLoader.

    ``train=True``: each pass is a seeded permutation of all images, each image randomly cropped (padding
    ``pad``, ``pad_mode``) and flipped on the device; ``train=False``: images in order, unaugmented. Batches
    are ``batch_size`` images and a smaller last one (the DataLoader's ``drop_last=False``). Call
    :meth:`set_epoch` before a pass to make it a function of that seed alone (as
    :meth:`kdlib.data.Data.set_epoch`); without it, successive passes continue one generator seeded by
    ``seed``.

    Augmentation runs ``chunk_batches`` batches at a time (a few kernels per chunk, none per step), so the
    memory beyond the stored images is one chunk of float32 inputs.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        train: bool,
        pad: int = 4,
        pad_mode: str = "constant",
        channels: int | None = None,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        chunk_batches: int = 32,
        seed: int = 0,
    ) -> None:
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"images must be (N, H, W, C) with one label each, got {tuple(images.shape)} "
                             f"images and {len(labels)} labels")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"invalid pad_mode '{pad_mode}'; choose one of: {', '.join(PAD_MODES)}")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.labels = labels.to(self.device, torch.int64)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self.batch_size = batch_size
        self.train = train
        self.pad, self.pad_mode = pad, pad_mode
        self.channels = channels
        self.channels_last = channels_last
        self.chunk_batches = max(1, chunk_batches)
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_dataset(
        cls, dataset: Any, spec: DatasetSpec, *, batch_size: int, train: bool, **kwargs: Any
    ) -> DeviceLoader:
        """The loader for a kdlib dataset (``Data.train.dataset`` / ``Data.test.dataset``) and its spec."""
        pixels, labels = dataset_arrays(dataset, spec.input_shape)
        return cls(pixels, labels, mean=spec.mean, std=spec.std, batch_size=batch_size, train=train,
                   channels=spec.input_shape[0], **kwargs)

    @property
    def num_images(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        return math.ceil(self.num_images / self.batch_size)

    def set_epoch(self, seed: int) -> None:
        """Make the next pass (order and augmentation) a function of ``seed`` alone."""
        self.generator.manual_seed(seed)

    def batch(
        self, index: Tensor, top: Tensor | None = None, left: Tensor | None = None, flip: Tensor | None = None
    ) -> Tensor:
        """The model input for images ``index``: cropped and flipped by the given draws if any, normalised."""
        index = index.to(self.device)
        if top is None:
            pixels = self.images[index]
        else:
            pixels = crop_flip(self.images, index, top.to(self.device), left.to(self.device),
                               flip.to(self.device), pad=self.pad, pad_mode=self.pad_mode)
        return to_model_input(pixels, self.mean, self.std, channels=self.channels,
                              channels_last=self.channels_last)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n, size = self.num_images, self.batch_size
        if self.train:  # every draw of the epoch, on the CPU, then to the device once
            order = torch.randperm(n, generator=self.generator)
            draws: tuple[Tensor, ...] = draw_augmentation(n, self.pad, self.generator)
            order, *draws = (t.to(self.device, non_blocking=True) for t in (order, *draws))
        else:
            order, draws = torch.arange(n, device=self.device), ()
        labels = self.labels[order]
        chunk = size * self.chunk_batches
        for start in range(0, n, chunk):
            part = slice(start, min(start + chunk, n))
            inputs = self.batch(order[part], *(d[part] for d in draws))
            for offset in range(0, len(inputs), size):
                yield inputs[offset:offset + size], labels[start + offset:start + offset + size]

    def __repr__(self) -> str:
        kind = f"train, crop pad {self.pad} {self.pad_mode} + flip" if self.train else "eval"
        return (f"DeviceLoader({self.num_images} images {tuple(self.images.shape[1:])} {self.images.dtype} "
                f"on {self.device}, batch {self.batch_size}, {kind})")


# --- metrics without per-step syncs ----------------------------------------------------------------
class DeviceMetrics:
    """The named loss terms of an epoch kept on the device, step by step; :meth:`read` syncs once.

    Each ``add`` is a handful of asynchronous kernels (stack the terms, store them as the step's row,
    accumulate them weighted by the batch size); nothing is copied to the host until :meth:`read`, which
    returns each term's mean and keeps every step's terms (:attr:`steps_read`), so that the trainer can name
    the first non-finite term and write per-step curves as the reference path does. The terms' names must be
    the same at every step of an epoch (a method's loss dict is fixed within an epoch).
    """

    def __init__(self, steps: int, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self.capacity = max(1, steps)
        self.names: list[str] | None = None
        self.sums: Tensor | None = None
        self.rows: Tensor | None = None
        self.images = 0
        self.steps = 0
        #: Each step's terms, ``{name: value}``, on the host after :meth:`read`.
        self.steps_read: list[dict[str, float]] = []

    def add(self, losses: dict[str, Tensor], batch_size: int) -> None:
        names = list(losses)
        if self.names is None:
            self.names = names
            self.sums = torch.zeros(len(names), dtype=torch.float32, device=self.device)
            self.rows = torch.zeros(self.capacity, len(names), dtype=torch.float32, device=self.device)
        elif names != self.names:
            raise ValueError(f"loss terms changed within an epoch: {self.names} then {names}")
        terms = torch.stack([value.detach().float() for value in losses.values()])
        self.sums.add_(terms, alpha=batch_size)
        if self.steps >= len(self.rows):  # more steps than announced: grow (rare, costs one allocation)
            self.rows = torch.cat([self.rows, torch.zeros_like(self.rows)])
        self.rows[self.steps] = terms
        self.images += batch_size
        self.steps += 1

    def read(self) -> dict[str, float]:
        """Each term's mean per image; every step's terms go to :attr:`steps_read` (the one host sync)."""
        if self.names is None:
            return {}
        sums, *rows = torch.cat([self.sums[None], self.rows[: self.steps]]).tolist()
        self.steps_read = [dict(zip(self.names, row, strict=True)) for row in rows]
        return {name: total / self.images for name, total in zip(self.names, sums, strict=True)}


# --- compilation with a fallback -------------------------------------------------------------------
class CompiledOrEager:
    """``fn`` compiled by ``torch.compile``, or ``fn`` itself when compiling is unavailable or fails.

    ``mode="reduce-overhead"`` records CUDA graphs (torch skips them, with a log line, where they cannot be
    used); each call is then marked as a new step (``cudagraph_mark_step_begin``), so the previous step's
    outputs may be overwritten. Shapes are static (``dynamic=False``). With ``batch_size`` set, a call whose
    first argument has another batch size (the smaller last batch of an epoch) runs ``fn`` eagerly: one
    eager step per epoch instead of a second compilation and a second CUDA-graph memory pool.

    If ``torch.compile`` raises, or a call fails inside dynamo or the compiler backend (no Triton, no C++
    compiler, an unsupported Python), the reason is logged and kept in ``fallback_reason``, and this
    and every later call run ``fn`` eagerly; errors of ``fn`` itself (e.g. a shape mismatch) still surface,
    from the eager call. Reaching dynamo's recompile limit is such a failure too (dynamo alone would run the
    frame eagerly with a warning while :meth:`describe` still said compiled), and so is a failure compiling
    the backward graph, which is compiled with the forward (torch would compile it lazily, at the first
    ``.backward()``, where no fallback can catch it). Each new instance starts from
    an empty dynamo cache (``torch._dynamo.reset()``): runs trained one after another in one process (the
    study with one job) each get their own recompile budget.

    Each instance watches its compilation (:class:`kdlib.compilation.CompileWatch`): :meth:`compile_record`
    gives the seconds spent compiling and the on-disk caches' hits and misses, and with ``reduce-overhead``
    :meth:`describe` says whether CUDA graphs were used or skipped (and torch's reason), as observed over the
    first compiled steps.
    """

    def __init__(self, fn: Callable[..., Any], *, enabled: bool = True, mode: str | None = None,
                 batch_size: int | None = None, backend: str | Callable[..., Any] = "inductor") -> None:
        self.fn = fn
        self.mode = mode
        self.batch_size = batch_size
        self.compiled: Callable[..., Any] | None = None
        self.fallback_reason: str | None = None
        self.watch: CompileWatch | None = None
        if enabled:
            torch._dynamo.reset()  # a new run: earlier runs' graphs do not count towards the recompile limit
            try:
                self.compiled = torch.compile(fn, mode=mode, dynamic=False, backend=backend)
            except Exception as error:  # e.g. dynamo unsupported on this Python
                self._fall_back(error)
            else:
                self.watch = CompileWatch(cudagraphs=mode == "reduce-overhead")

    @property
    def is_compiled(self) -> bool:
        return self.compiled is not None

    def describe(self) -> str:
        """``eager``, ``eager (fallback: reason)`` or the compile mode, and with ``reduce-overhead`` after the
        first compiled call whether CUDA graphs were used (:func:`kdlib.compilation.cudagraph_state`), e.g.
        ``compiled (reduce-overhead, CUDA graphs skipped: mutated inputs (1 instances))``; for run records and
        benchmarks."""
        if self.compiled is not None:
            graphs = self.watch.cudagraphs() if self.watch is not None else None
            return f"compiled ({self.mode or 'default'}{f', CUDA graphs {graphs}' if graphs else ''})"
        return f"eager (fallback: {self.fallback_reason})" if self.fallback_reason else "eager"

    def compile_record(self) -> dict[str, Any] | None:
        """Seconds compiling and cache hits and misses (:meth:`kdlib.compilation.CompileWatch.record`); None
        where nothing was compiled (eager, or no compiled call yet)."""
        return self.watch.record() if self.watch is not None else None

    def _fall_back(self, error: BaseException) -> None:
        self.compiled = None
        self.fallback_reason = f"{type(error).__name__}: {' '.join(str(error).split())[:500]}"
        log.warning("torch.compile unavailable, running eagerly (%s)", self.fallback_reason)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None and (self.batch_size is None or len(args[0]) == self.batch_size):
            if self.mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            device = args[0].device if args and isinstance(args[0], Tensor) else torch.device("cpu")
            try:
                with (  # raised here, in the compiled call, not eager with a warning or at .backward():
                    self.watch.call(device),
                    torch._dynamo.config.patch(fail_on_recompile_limit_hit=True),
                    torch._functorch.config.patch(force_non_lazy_backward_lowering=True),
                ):
                    return self.compiled(*args, **kwargs)
            except (torch._dynamo.exc.TorchDynamoException, torch._dynamo.exc.FailOnRecompileLimitHit) as err:
                self._fall_back(err)
        return self.fn(*args, **kwargs)


# --- the teacher without autograd bookkeeping ------------------------------------------------------
def _teacher_mode() -> Any:
    """``inference_mode`` when eager; ``no_grad`` while ``torch.compile`` traces. Inside a graph the two are
    the same (nothing is recorded either way), and tracing an inference-mode region failed in inductor on
    torch 2.11 on an H200, after which the eager fallback hit an internal assert."""
    return torch.no_grad() if torch.compiler.is_compiling() else torch.inference_mode()


def _inference_teacher_forward(self: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    with _teacher_mode():
        logits, feats = self.teacher(x, with_features=True)
    return logits.clone(), [f.clone() for f in feats]


def _inference_teacher_last_map(self: nn.Module, x: Tensor, tap: str) -> tuple[Tensor, Tensor]:
    with _teacher_mode():
        logits, feature = last_map(self.teacher, x, tap)
    return logits.clone(), feature.clone()


def run_teacher_in_inference_mode(distiller: nn.Module) -> None:
    """Make ``distiller.teacher_forward`` and ``teacher_last_map`` (ICKD's and IE-KD's teacher) run the
    teacher under ``torch.inference_mode``.

    Inference mode skips the version counters and view tracking that ``no_grad`` still keeps. Its outputs
    are inference tensors, which autograd refuses to save for backward (a method may feed a teacher feature
    to a trainable module, as IE-KD's auto-encoder does, or multiply it with a student tensor), so they are
    returned as clones: ordinary tensors without history. Set once per run, as a method bound to this
    distiller (the class is untouched; a deep copy rebinds to the copy), so a compiled distiller sees the
    same function at every step.
    """
    if distiller.teacher is not None:
        distiller.teacher_forward = types.MethodType(_inference_teacher_forward, distiller)
        distiller.teacher_last_map = types.MethodType(_inference_teacher_last_map, distiller)


def cast_teacher_weights(distiller: nn.Module, dtype: torch.dtype) -> None:
    """Store the frozen teacher's convolution and linear weights in ``dtype``, the autocast dtype of the run.

    Autocast casts a weight to its lower precision at every call unless the weight requires grad (its cache
    holds only those), so a frozen teacher's weights were cast again at every step: 36 casts per forward of a
    resnet32. Cast once, the forward under autocast is bit-identical (``tests/test_fast.py``). BatchNorm
    stays float32, as autocast keeps it. Only for runs whose every teacher call is under autocast (the fast
    path with ``amp``): a cast teacher cannot run on float32 inputs outside it.
    """
    if distiller.teacher is None:
        return
    for module in distiller.teacher.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            module.to(dtype)


def fused_sgd_available(device: torch.device) -> bool:
    """Whether ``torch.optim.SGD(fused=True)`` is used on ``device`` (CUDA: one kernel per step)."""
    return device.type == "cuda"


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: CUDA with bf16 support, or a CPU with AVX512-BF16 (Intel
    since Cooper Lake, AMD since Zen 4) or AMX (Intel Sapphire Rapids and later). Elsewhere bf16 is emulated
    and slower than fp32. (``torch.cpu._is_avx512_bf16_supported`` and ``_is_amx_tile_supported`` are the
    checks torch's own CPU kernels dispatch on.)"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    cpu = torch.cpu
    return device.type == "cpu" and (cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())


def resolve_precision(requested: str, device: torch.device) -> str:
    """``bf16`` or ``fp32`` for ``requested`` (one of :data:`PRECISIONS`) on ``device``; ``auto`` is bf16
    where it is native (:func:`bf16_native`). An explicit ``bf16`` where it is not runs emulated, with a
    warning."""
    if requested not in PRECISIONS:
        raise ValueError(f"invalid precision '{requested}'; choose one of: {', '.join(PRECISIONS)}")
    if requested == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    if requested == "bf16" and not bf16_native(device):
        log.warning("this %s has no native bf16 (AVX512-BF16 or AMX): bf16 is emulated, slower than fp32",
                    device.type.upper())
    return requested
