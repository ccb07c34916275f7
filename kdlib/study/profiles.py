"""Profiles: the full parameters of each notebook at a scale (``notebooks/profiles/<profile>.json``).

- :func:`load_profile` / :func:`notebook_parameters`: a profile's ``common`` parameters and per-notebook
  overrides, as the papermill parameters of one notebook.
- :func:`reproduce`: the notebooks executed through papermill with a profile's parameters (``make
  reproduce``); :func:`refresh`: the committed notebooks re-executed in place with their defaults.
- :func:`profile_runs`: every run a profile plans (what ``verify`` retrains).
- :func:`estimate`: a profile's device hours from a measured throughput (:func:`bench_throughput`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kdlib.methods import get_method
from kdlib.paths import (
    BENCH_CSV,
    NOTEBOOKS_DIR,
    PROFILES_DIR,
    REPO,
    REPRODUCE_DIR,
    RUNS_DIR,
    profile_file,
    relative,
    repo_path,
    unknown_profile,
)
from kdlib.recipes import RECIPES, get_recipe
from kdlib.study import staged
from kdlib.study.grid import Run, grid_cells, plan_runs, share_cores
from kdlib.study.parameters import (
    NOTEBOOK_METHODS,
    NOTEBOOKS,
    Pair,
    Variant,
    check_notebook_parameters,
    check_notebooks,
    parameter_defaults,
    parse_pairs,
    parse_seeds,
    parse_variants,
)

log = logging.getLogger(__name__)

PROFILES = ("cifar100", "imagenet", "proxy", "smoke")
#: Training and test set sizes, used by ``estimate``.
DATASET_SIZES = {"cifar100": (50_000, 10_000), "cifar10": (50_000, 10_000), "fashion_mnist": (60_000, 10_000),
                 "imagenet": (1_281_167, 50_000)}


def profile_path(name: str) -> Path:
    """The file of profile ``name`` (:func:`~kdlib.paths.profile_file`: a name, never a path),
    ``notebooks/profiles/<name>.json``; a ``ValueError`` listing the profiles when there is none."""
    path = profile_file(name, PROFILES_DIR)
    if not path.is_file():
        raise ValueError(unknown_profile(name, PROFILES_DIR))
    return path


def load_profile(name: str) -> dict[str, Any]:
    """``notebooks/profiles/<name>.json`` (:func:`profile_path`): ``common`` parameters and per-notebook
    overrides."""
    path = profile_path(name)
    try:
        profile = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"profile '{path}' is not valid JSON ({error})") from None
    shape = "an object with 'common' and 'notebooks' objects"
    if isinstance(profile, dict) and "stages" in profile:  # a staged protocol (book/protocol_v2.md)
        raise ValueError(f"profile '{name}' is a staged protocol (teacher, tuning, final) that the notebooks "
                         f"do not run: python -m kdlib.study reproduce --profile {name} runs its stages")
    if not isinstance(profile, dict):
        raise ValueError(f"profile '{path}' must be {shape}, got {type(profile).__name__} {profile!r:.60}")
    wrong = [k for k in ("common", "notebooks") if not isinstance(profile.get(k, {}), dict)]
    if not wrong:
        wrong = [f"notebooks.{k}" for k, v in profile.get("notebooks", {}).items() if not isinstance(v, dict)]
    if wrong:
        raise ValueError(f"profile '{path}' must be {shape}; not an object: {', '.join(map(str, wrong))}")
    unknown = set(profile.get("notebooks", {})) - set(NOTEBOOKS)
    if unknown:
        raise ValueError(f"profile '{name}' names unknown notebooks {sorted(unknown)}; "
                         f"choose from {', '.join(NOTEBOOKS)}")
    return profile


def notebook_parameters(profile: str | Mapping[str, Any], notebook: str, **extra: Any) -> dict[str, Any]:
    """The papermill parameters of ``notebook`` under ``profile``: ``common``, then the notebook's own
    entries, then ``extra`` (e.g. ``jobs``), keeping the names the notebook's ``parameters`` cell declares
    (a notebook-specific entry it does not declare is an error: a typo would be ignored by papermill)."""
    prof = load_profile(profile) if isinstance(profile, str) else profile
    if notebook not in NOTEBOOKS:
        raise ValueError(f"unknown notebook '{notebook}'; choose one of: {', '.join(NOTEBOOKS)}")
    declared = parameter_defaults(notebook)
    own = {k: v for k, v in prof.get("notebooks", {}).get(notebook, {}).items() if not k.startswith("_")}
    unknown = sorted(set(own) - set(declared))
    if unknown:
        raise ValueError(f"profile entries {unknown} for {notebook} are not among its parameters: "
                         f"{', '.join(declared)}")
    params = {**prof.get("common", {}), **own, **extra}
    return {k: v for k, v in params.items() if k in declared}


def profile_runs(profile: str, match: Sequence[str] = (), notebooks: Sequence[str] | None = None,
                 **extra: Any) -> list[Run]:
    """Every run the notebooks of ``profile`` plan (each folder once; all notebooks but 00_teachers, or
    ``notebooks``; ``extra`` parameters as :func:`notebook_parameters` takes them; a staged protocol's
    :func:`~kdlib.study.staged.planned_runs`), or those whose folder
    holds one of the ``match`` paths as whole parts (``kd/default/seed0`` selects ``…/kd/default/seed0``, not
    ``…/iekd/default/seed0``); ``ValueError`` when ``match`` selects none, or for an unknown profile or
    notebook."""
    check_notebooks(notebooks or [])
    planned: dict[str, Run] = {}
    if staged.is_staged(profile):
        planned = {run.key: run for run in staged.planned_runs(staged.load_staged(profile))}
    for nb in [] if planned else notebooks or NOTEBOOKS[1:]:
        if nb == NOTEBOOKS[0]:  # the teachers' notebook evaluates given checkpoints (train: false)
            continue
        params = {**parameter_defaults(nb), **notebook_parameters(profile, nb, **extra)}
        for run in plan_runs(check_notebook_parameters(nb, params)):
            planned.setdefault(run.key, run)
    runs = {key: run for key, run in planned.items()
            if not match or any(f"/{text.strip('/')}/" in f"/{key}/" for text in match)}
    if not runs:
        raise ValueError(f"no run of profile '{profile}' matches {list(match)}; runs are named like "
                         "fashion_mnist/repdistiller/resnet32-resnet8/kd/default/seed0")
    return list(runs.values())


def profile_results_dir(profile: str) -> Path:
    """Where ``profile`` commits its records (its ``results_dir``)."""
    if staged.is_staged(profile):
        return staged.load_staged(profile).results_dir
    folder = load_profile(profile).get("common", {}).get("results_dir")
    if not folder:
        raise ValueError(f"profile '{profile}' sets no results_dir")
    return repo_path(folder)


# --- executing the notebooks ----------------------------------------------------------------------
def reproduce(profile: str, jobs: int = 1, notebooks: Sequence[str] | None = None,
              out_dir: str | Path | None = None, device: str | None = None) -> list[Path]:
    """Execute the notebooks with ``profile``'s full parameters through papermill (kernel in
    ``notebooks/``); executed copies go to ``runs/reproduce/<profile>/`` and records to the profile's
    ``results_dir``. Every notebook's name and parameters are checked before the first one runs."""
    import papermill

    prof = load_profile(profile)
    chosen = check_notebooks(notebooks) if notebooks else list(NOTEBOOKS)
    extra: dict[str, Any] = {"jobs": jobs}
    threads = prof.get("common", {}).get("threads")
    # every core: one run with all of them, or a share per job (fewer than the profile's threads where its
    # jobs would not fit the cores at those: runs packed onto GPUs need few)
    if threads is None or jobs * threads > (os.cpu_count() or 1):
        jobs, extra["threads"] = share_cores(jobs, None)
        extra["jobs"] = jobs
    if device:
        extra["device"] = device
    plans = {nb: notebook_parameters(prof, nb, **extra) for nb in chosen}
    for nb, params in plans.items():
        try:
            check_notebook_parameters(nb, {**parameter_defaults(nb), **params})
        except ValueError as error:
            raise ValueError(f"profile '{profile}', notebook {nb}: {error}") from None
    target = repo_path(out_dir) if out_dir else REPRODUCE_DIR / profile
    target.mkdir(parents=True, exist_ok=True)
    # the kernels (cwd notebooks/) import this checkout's kdlib, whatever the environment has installed
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    written = []
    for nb, params in plans.items():
        output = target / f"{nb}.ipynb"
        log.info("executing %s with profile %s → %s", nb, profile, relative(output))
        papermill.execute_notebook(str(NOTEBOOKS_DIR / f"{nb}.ipynb"), str(output), parameters=params,
                                   cwd=str(NOTEBOOKS_DIR), progress_bar=False, log_output=True)
        written.append(output)
    return written


def refresh(notebooks: Sequence[str] | None = None, fresh: bool = True) -> dict[str, float]:
    """Execute the committed notebooks in place with their default parameters (kernel in ``notebooks/``),
    so that their stored outputs are exactly those of the default run; ``fresh`` first removes their run
    folders (``runs/notebooks/<name>``) so that every smoke run trains. Returns seconds per notebook; an
    unknown name is a ``ValueError`` before any notebook runs."""
    import nbformat
    from nbclient import NotebookClient

    timings = {}
    for name in check_notebooks(notebooks or NOTEBOOKS):
        path = NOTEBOOKS_DIR / f"{name}.ipynb"
        out_dir = parameter_defaults(name).get("out_dir")
        if fresh and out_dir and repo_path(out_dir).resolve().is_relative_to(RUNS_DIR.resolve()):
            shutil.rmtree(repo_path(out_dir), ignore_errors=True)
        nb = nbformat.read(path, as_version=4)
        tick = time.perf_counter()
        NotebookClient(nb, timeout=1800, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOKS_DIR)}}).execute()
        timings[name] = time.perf_counter() - tick
        for cell in nb.cells:  # no execution timestamps in the committed files
            cell.metadata.pop("execution", None)
        nbformat.write(nb, path)
        log.info("%s: executed in %.1f s", name, timings[name])
    return timings


# --- cost -----------------------------------------------------------------------------------------
def _estimated_cells(nb: str, params: Mapping[str, Any]) -> Iterator[tuple[str, Pair, Variant, int]]:
    """The runs notebook ``nb`` plans under ``params`` as :func:`~kdlib.study.grid.grid_cells`, read from the
    parameters alone (no teacher checkpoint needed); 00_teachers trains one ``ce`` run per teacher."""
    pairs = parse_pairs(params["pairs"])
    seeds = parse_seeds(params["seeds"])
    if nb == "00_teachers":
        for teacher in dict.fromkeys(p.teacher for p in pairs):
            yield f"teacher/{teacher}", Pair(teacher, teacher), Variant("ce"), seeds[0]
        return
    variants = [*parse_variants(params.get("baselines", []), None, "baselines"),
                *parse_variants(params.get("variants", []), NOTEBOOK_METHODS[nb])]
    yield from grid_cells(params["dataset"], params["recipe"], pairs, variants, seeds)


def _images(params: Mapping[str, Any],
            cells: Sequence[tuple[str, Pair, Variant, int]]) -> tuple[float, float]:
    """The training and evaluation images that ``cells`` process (see :func:`estimate`)."""
    n_train, n_test = DATASET_SIZES.get(params["dataset"], (50_000, 10_000))
    n_train = min(n_train, params.get("subset") or n_train)
    n_test = min(n_test, params.get("eval_subset") or n_test)
    overrides = {"epochs": params["epochs"]} if params.get("epochs") else {}
    name = params["recipe"] if params["recipe"] in RECIPES else "repdistiller"  # not yet in kdlib
    train_images = eval_images = 0.0
    for _, pair, variant, _ in cells:
        recipe = get_recipe(name, pair.student, **overrides)  # its epochs, scaled
        pre = recipe.pretrain_epochs if get_method(variant.method).has_pretrain else 0
        train_images += (recipe.epochs + pre) * n_train
        eval_images += (recipe.epochs + (1 if variant.needs_teacher else 0)) * n_test
    return train_images, eval_images


def _rate(name: str, value: Any) -> float:
    """``value`` when it is a finite number of images per second > 0, else a ``ValueError`` naming
    ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number of images per second > 0, got {value!r}")
    return float(value)


def estimate(profile: str, images_per_s: float, eval_images_per_s: float | None = None) -> Any:
    """An **estimate** (not a measurement) of a profile's device hours from a measured throughput.

    Per notebook: its runs (those no earlier notebook already ran: same folder), the training images they
    process (epochs × training set, plus IE-KD's pre-distillation epochs) and the evaluation images (one
    test-set pass per epoch, plus the teacher's), divided by ``images_per_s`` (training: teacher forward +
    student step) and ``eval_images_per_s`` (None: 3 × training); each a finite number > 0, else a
    ``ValueError`` naming it. Reads the profile only: no data, teacher or device is needed.
    """
    import pandas as pd

    images_per_s = _rate("images_per_s", images_per_s)
    eval_ips = (3 * images_per_s if eval_images_per_s is None
                else _rate("eval_images_per_s", eval_images_per_s))
    prof = load_profile(profile)
    seen: set[str] = set()
    rows = []
    for nb in NOTEBOOKS:
        params = notebook_parameters(prof, nb)
        if nb in ("00_teachers", "06_head_to_head") and not params.get("train", False):
            continue
        cells = []
        for cell in _estimated_cells(nb, params):
            if cell[0] not in seen:
                seen.add(cell[0])
                cells.append(cell)
        train_images, eval_images = _images(params, cells)
        hours = (train_images / images_per_s + eval_images / eval_ips) / 3600
        rows.append({"notebook": nb, "runs": len(cells), "train images (M)": train_images / 1e6,
                     "eval images (M)": eval_images / 1e6, "estimated hours": hours})
    table = pd.DataFrame(rows)
    total = {"notebook": "total", **{c: table[c].sum() for c in table.columns if c != "notebook"}}
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)


def bench_throughput(device: str, pairs: Sequence[Pair] = (),
                     path: str | Path = BENCH_CSV) -> tuple[float, float | None, str]:
    """Training (and evaluation) images per second measured by ``bench/bench.py`` on ``device`` (``cpu`` or
    ``cuda``) in its latest measurement: the row of one of ``pairs`` if the benchmark has one, else its
    slowest pair; with a line saying where the number comes from."""
    import csv

    path = Path(path)
    rows = list(csv.DictReader(path.open())) if path.is_file() else []
    rows = [r for r in rows if r.get("device") == device and r.get("ours_images_per_s")]
    if not rows:
        target = "bench-gpu" if device == "cuda" else "bench"
        raise ValueError(f"no {device} measurement in {relative(path)}: run make {target} or pass "
                         "--images-per-s")
    latest = max(r["date"] for r in rows)
    rows = [r for r in rows if r["date"] == latest]
    names = [f"{p.teacher}->{p.student}" for p in pairs]
    rows = [r for r in rows if any(r["pair"].endswith(n) for n in names)] or rows
    slowest = min(rows, key=lambda r: float(r["ours_images_per_s"]))
    eval_s = slowest.get("ours_eval_s")
    eval_ips = 10_000 / float(eval_s) if eval_s else None
    basis = (f"bench/results.csv {latest[:10]} {slowest['device_name']}, pair {slowest['pair']}: "
             f"{float(slowest['ours_images_per_s']):.0f} training images/s"
             + (f", {eval_ips:.0f} evaluation images/s" if eval_ips else ""))
    return float(slowest["ours_images_per_s"]), eval_ips, basis
