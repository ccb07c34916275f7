"""The repository's paths, named once: a module that reads or writes a file of the repository imports them.

Paths are absolute (from this file's place in the checkout); :func:`repo_path` resolves a path given
relative to the repository root (not the working directory) and :func:`relative` writes one back for display.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The repository root (the folder holding ``kdlib/``).
REPO = Path(__file__).resolve().parents[1]
#: This package's code.
PACKAGE_DIR = REPO / "kdlib"
NOTEBOOKS_DIR = REPO / "notebooks"
#: Each profile's notebook parameters, ``notebooks/profiles/<profile>.json``.
PROFILES_DIR = NOTEBOOKS_DIR / "profiles"
DATA_DIR = REPO / "data"
#: Committed run records, ``data/results/<profile>/<run key>/record.json``.
RESULTS_DIR = DATA_DIR / "results"
#: Committed teacher checkpoints, ``data/teachers/<dataset>/<arch>/model.pt``.
TEACHERS_DIR = DATA_DIR / "teachers"
#: Published numbers, each with its source.
REPORTED_CSV = DATA_DIR / "reported" / "reported_results.csv"
#: The mapping between the papers' method labels and ours.
METHOD_MAP = DATA_DIR / "reported" / "method_map.json"
#: Run folders, git-ignored (checkpoints and scratch runs).
RUNS_DIR = REPO / "runs"
#: Where ``make reproduce`` writes the executed notebooks, ``runs/reproduce/<profile>/``.
REPRODUCE_DIR = RUNS_DIR / "reproduce"
#: torch inductor's on-disk caches (compiled graphs and kernels) of the trainer's runs, one folder per kind of
#: CPU, ``runs/compile_cache/<cpu>/``, unless ``TORCHINDUCTOR_CACHE_DIR`` is set (:mod:`kdlib.compilation`).
COMPILE_CACHE_DIR = RUNS_DIR / "compile_cache"
#: The trainer's measured throughput (``bench/bench.py``).
BENCH_CSV = REPO / "bench" / "results.csv"
#: bf16 against fp32, paired by seed (``bench/precision.py``): its records and its summary.
PRECISION_DIR = REPO / "bench" / "precision"
PRECISION_CSV = REPO / "bench" / "precision.csv"


def repo_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as an absolute path; a relative one is relative to the repository root (not the cwd), so
    notebooks give the same result from the root and from ``notebooks/``."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO / path


def relative(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the repository root when inside it (for display: no machine paths)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO.resolve()))
    except ValueError:
        return str(path)


def profile_file(name: str, folder: Path) -> Path:
    """``folder/<name>.json``, the file of profile ``name`` (the profiles are in :data:`PROFILES_DIR`). A
    profile is named by a file name, never a path (a profile names the folders its runs write to, so one read
    from elsewhere could make them write anywhere); anything else is a ``ValueError`` listing the profiles in
    ``folder``."""
    if isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name:
        return folder / f"{name}.json"
    raise ValueError(unknown_profile(name, folder))


def unknown_profile(name: object, folder: Path) -> str:
    """The message for a name that names no profile in ``folder``: the profiles there, and what a name is."""
    found = sorted(p.stem for p in folder.glob("*.json"))
    return (f"unknown profile '{name}'; choose one of: {', '.join(found)} (a profile is the name of a file "
            f"in {relative(folder)}/, not a path)")
