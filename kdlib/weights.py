"""Published weights: torchvision's ImageNet weights, RepDistiller's CIFAR-100 teachers (``fetch-teachers``).

torchvision weights (teachers and pretrained students on ImageNet): ``--teacher-ckpt`` and
``--student-weights`` take a local weights file (torchvision's bare state dict, e.g.
``resnet34-b627a593.pth``) or the word ``torchvision``, which downloads the architecture's ``IMAGENET1K_V1``
weights (:data:`TORCHVISION_WEIGHTS`; the ones the ICKD and CD papers used: ResNet34 73.31 top-1) into
torch's hub cache (``$TORCH_HOME/hub/checkpoints``, checked against the hash in the file name) and reads them
from there.
Either way the run record carries the file's SHA-256, so the same weights give the same ``config_id``.

CIFAR-100 teachers (:func:`fetch_teachers`): RepDistiller's download server is gone; mdistiller republishes
the same teachers as one archive, :data:`MDISTILLER_TEACHERS_URL` **[assumption: the URL of mdistiller's
GitHub release "checkpoints"; override it with ``--url``, e.g. ``--url file:///path/cifar_teachers.tar``]**,
laid out as ``<arch>_vanilla/ckpt_epoch_240.pth`` in RepDistiller's ``{'model': state_dict}`` format.
``python -m kdlib fetch-teachers`` downloads it, extracts each teacher to ``DEST/<arch>_vanilla/`` (the layout
``kdlib.study.teacher_checkpoint`` looks for), evaluates it on the CIFAR-100 test set and writes
``DEST/teachers.json``: measured top-1/top-5 beside the accuracy RepDistiller advertises
(``data/reported/reported_results.csv``, method ``Teacher``). Released teachers are known to differ from
their advertised accuracy (resnet110: 70.27 measured, 74.31 advertised), hence the measurement.

Without network every download fails with one line (:class:`WeightsError`, a :class:`~kdlib.data.DataError`).
"""

from __future__ import annotations

import csv
import datetime
import json
import logging
import os
import re
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import torch

from kdlib import models
from kdlib.data import DataError
from kdlib.files import file_sha256
from kdlib.loop import evaluate_checkpoint
from kdlib.paths import REPORTED_CSV

log = logging.getLogger(__name__)

#: The keyword that stands for "torchvision's published weights of this architecture".
TORCHVISION = "torchvision"
#: torchvision's weights per kdlib architecture (``torchvision.models.get_weight`` names).
TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
    "mobilenet_v2": "MobileNet_V2_Weights.IMAGENET1K_V1",
}
#: mdistiller's release of RepDistiller's CIFAR-100 teachers (an assumption, see the module docstring).
MDISTILLER_TEACHERS_URL = (
    "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"
)
#: The checkpoint file of a teacher inside the archive, ``<arch>_vanilla/ckpt_epoch_240.pth``.
TEACHER_FILE = "ckpt_epoch_240.pth"
DOWNLOAD_TIMEOUT_S = 30


class WeightsError(DataError):
    """Published weights could not be found or downloaded; the message says how to get them."""


def is_torchvision(spec: str | os.PathLike[str] | None) -> bool:
    return isinstance(spec, str) and spec == TORCHVISION


def torchvision_weights_name(arch: str) -> str:
    """The torchvision weights enum for ``arch``; an error listing the architectures that have some."""
    if arch not in TORCHVISION_WEIGHTS:
        raise ValueError(
            f"torchvision publishes no weights for '{arch}'; '{TORCHVISION}' works with: "
            f"{', '.join(TORCHVISION_WEIGHTS)} (else pass a weights file)"
        )
    return TORCHVISION_WEIGHTS[arch]


def torchvision_weights_file(arch: str) -> Path:
    """The local file of torchvision's weights for ``arch``, downloaded into torch's hub cache if needed."""
    import torchvision

    name = torchvision_weights_name(arch)
    url = torchvision.models.get_weight(name).url
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    match = torch.hub.HASH_REGEX.search(path.name)
    try:
        torch.hub.download_url_to_file(url, str(path), match.group(1) if match else None, progress=False)
    except Exception as error:  # network errors come in many types
        raise WeightsError(
            f"could not download torchvision's {name} from {url} ({_reason(error)}); without network, copy "
            f"that file here from a machine with one and pass its path instead of '{TORCHVISION}'"
        ) from None
    return path


def resolve_weights(spec: str | os.PathLike[str], arch: str | None) -> tuple[Path, str]:
    """``(file, description)`` of a weights argument: a path, or ``torchvision`` (downloaded for ``arch``)."""
    if is_torchvision(spec):
        if arch is None:
            raise ValueError(f"'{TORCHVISION}' weights need the architecture (--teacher / --student)")
        return torchvision_weights_file(arch), f"{TORCHVISION}:{torchvision_weights_name(arch)}"
    return Path(spec), str(spec)


# --- CIFAR-100 teachers ---------------------------------------------------------------------------
def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"{type(error.reason).__name__}: {error.reason}" if error.reason else "URLError"
    return f"{type(error).__name__}: {error}"


def download(url: str, path: Path) -> Path:
    """Download ``url`` to ``path`` (through a temporary file); :class:`WeightsError` on any failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f, length=1 << 20)
    except Exception as error:
        tmp.unlink(missing_ok=True)
        raise WeightsError(
            f"could not download {url} ({_reason(error)}); without network, download cifar_teachers.tar "
            "elsewhere and pass --url file:///path/to/cifar_teachers.tar"
        ) from None
    os.replace(tmp, path)
    return path


def extract_teachers(archive: Path, dest: Path) -> dict[str, Path]:
    """Copy every ``<arch>_vanilla/ckpt_epoch_240.pth`` of ``archive`` (any leading folder) to
    ``dest/<arch>_vanilla/ckpt_epoch_240.pth``; returns ``{arch: path}``. Nothing else is extracted."""
    pattern = re.compile(rf"(?:^|/)([A-Za-z0-9_]+)_vanilla/{re.escape(TEACHER_FILE)}$")
    found: dict[str, Path] = {}
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                match = pattern.search(member.name)
                if not match or not member.isfile():
                    continue
                target = dest / f"{match.group(1)}_vanilla" / TEACHER_FILE
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with source, open(target, "wb") as f:
                    shutil.copyfileobj(source, f, length=1 << 20)
                found[match.group(1)] = target
    except (tarfile.TarError, OSError) as error:
        raise WeightsError(f"'{archive}' is not a readable tar archive ({error})") from None
    if not found:
        raise WeightsError(f"'{archive}' holds no '<arch>_vanilla/{TEACHER_FILE}' teacher checkpoints")
    return found


def advertised_accuracies(dataset: str = "CIFAR-100", path: Path = REPORTED_CSV) -> dict[str, dict]:
    """``{arch: {"top1": value, "source": ...}}``: the teachers' advertised top-1 in ``reported_results.csv``
    (method ``Teacher``), RepDistiller's row where there are several."""
    if not path.is_file():
        return {}
    found: dict[str, dict] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["dataset"] != dataset or row["method"] != "Teacher" or row["metric"] != "top1_acc":
                continue
            arch = row["teacher_id"]
            if arch and (arch not in found or row["paper"].startswith("RepDistiller")):
                found[arch] = {"top1": float(row["value"]), "source": row["source"], "paper": row["paper"]}
    return found


def fetch_teachers(
    dest: str | os.PathLike[str],
    url: str = MDISTILLER_TEACHERS_URL,
    *,
    evaluate: bool = True,
    data_root: str | os.PathLike[str] | None = None,
    device: str = "auto",
    workers: int = 2,
    download_data: bool = True,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Download and extract the CIFAR-100 teachers into ``dest``, evaluate each (unless ``evaluate`` is False)
    and write ``dest/teachers.json`` (returned): per teacher its file, SHA-256, measured top-1/top-5 and the
    advertised top-1 with its source. A teacher that fails to load gets an ``error`` instead of metrics."""
    dest = Path(dest)
    name = os.path.basename(urllib.request.url2pathname(url.split("?")[0]))
    archive = dest / (name or "cifar_teachers.tar")
    if archive.is_file():
        log.info("using %s (already downloaded; delete it to download again)", archive)
    else:
        download(url, archive)
    extracted = extract_teachers(archive, dest)
    advertised = advertised_accuracies()
    rows = []
    for arch, path in sorted(extracted.items()):
        row: dict[str, Any] = {"arch": arch, "path": str(path), "sha256": file_sha256(path)}
        ad = advertised.get(arch)
        row.update(advertised_top1=ad["top1"] if ad else None, advertised_source=ad["source"] if ad else None)
        if arch not in models.available():
            row["error"] = f"unknown architecture '{arch}'"
        elif evaluate:
            try:
                result = evaluate_checkpoint(arch, path, "cifar100", data_root=data_root, device=device,
                                             workers=workers, download=download_data, batch_size=batch_size)
            except models.CheckpointError as error:
                row["error"] = str(error)
            else:
                row.update(top1=result["top1"], top5=result["top5"], test_images=result["n"])
                if ad:
                    row["top1_minus_advertised"] = result["top1"] - ad["top1"]
        rows.append(row)
        log.info("teacher %s: %s", arch, {k: v for k, v in row.items() if k not in ("path", "sha256")})
    summary = {
        "url": url,
        "archive": str(archive),
        "archive_sha256": file_sha256(archive),
        "dataset": "cifar100",
        "fetched_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch_version": str(torch.__version__),
        "python": sys.version.split()[0],
        "teachers": rows,
    }
    (dest / "teachers.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
