"""What the notebooks read from a grid's outcomes: tables, records, trained models, and the teachers.

- :func:`show`: any table formatted for reading.
- :func:`outcomes_table`, :func:`records_frame`, :func:`metrics`: the runs as tables (and the JSON that
  ``tests/test_notebooks.py`` checks in the stored outputs).
- :func:`completed`, :func:`find`, :func:`trained`, :func:`load_distiller`, :func:`sample_batch`: trained
  models and a fixed batch for the notebooks' figures.
- :func:`teacher_runs`, :func:`trained_teachers`, :func:`evaluate_teachers`: ``00_teachers``.
- :func:`setup`: threads, seeds and logging, once at the top of a notebook.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path
from typing import Any

import torch

from kdlib import models, report, results
from kdlib.config import TrainConfig
from kdlib.data import get_dataset_spec, load_data
from kdlib.loop import evaluate_checkpoint, seed_everything
from kdlib.methods import build_distiller, make_config
from kdlib.paths import TEACHERS_DIR, relative, repo_path
from kdlib.record import config_id_of
from kdlib.study.grid import CHECKPOINT, RECORD, Outcome, Run, read_record
from kdlib.study.parameters import Pair, Parameters, Variant


def setup(threads: int | None = 1, seed: int = 0) -> None:
    """Fix the thread count, seed python, numpy and torch, and keep the package's log messages out of the
    notebook (failures are in :func:`outcomes_table`; machine paths stay out of the outputs). Call once at
    the top of a notebook."""
    if threads:
        torch.set_num_threads(threads)
    seed_everything(seed)
    package = logging.getLogger("kdlib")
    if not package.handlers:
        package.addHandler(logging.NullHandler())


# --- tables ---------------------------------------------------------------------------------------
def show(table: Any, digits: int = 2) -> Any:
    """A table as a reader sees it in a notebook: HTML without the index, numbers to ``digits`` decimals,
    missing values as empty cells, headers in words (``top1_last`` → ``top1 last``), no cell cut short, and
    what every row shares said once above the table (:func:`kdlib.report.split_constant`)."""
    import pandas as pd
    from IPython.display import HTML

    constant, frame = report.split_constant(table.rename(columns=lambda c: str(c).replace("_", " ")))
    with pd.option_context("display.max_colwidth", None):
        html = frame.to_html(index=False, na_rep="", border=0, classes="kdlib-notebook-table",
                             float_format=lambda v: f"{v:.{digits}f}")
    above = report.caption({k: v for k, v in constant.items() if v not in ("nan", "None")})
    html = html.replace(' style="text-align: right;"', "")  # pandas right-aligns the headers over left text
    return HTML(f"<p>{escape(above)}</p>\n{html}" if above else html)


def outcomes_table(outcomes: Sequence[Outcome]) -> Any:
    """One row per run: label, pair, seed, status, last/best top-1, teacher top-1, wall time."""
    import pandas as pd

    rows = []
    for o in outcomes:
        r = o.record or {}
        rows.append({
            "run": o.run.label,
            "pair": str(o.run.pair) if o.run.variant.needs_teacher else o.run.pair.student,
            "seed": o.run.seed, "status": o.status, "top-1 last": r.get("top1_last"),
            "top-1 best": r.get("top1_best"), "teacher top-1": r.get("teacher_top1"),
            "wall time (s)": round(r["wall_time_s"], 1) if r.get("wall_time_s") is not None else None,
            "note": o.message,
        })
    return pd.DataFrame(rows)


def records_frame(outcomes: Sequence[Outcome]) -> Any:
    """The completed and diverged records of ``outcomes`` as :func:`kdlib.results.load_records` rows."""

    paths = [o.record_path for o in outcomes if o.status != "failed" and o.record_path is not None]
    return results.load_records(paths, statuses=("completed", results.STATUS_DIVERGED))


def metrics(outcomes: Sequence[Outcome]) -> str:
    """JSON of each run's machine-dependent values (status, accuracies, last losses, wall time): what
    ``tests/test_notebooks.py`` checks for sane ranges in the committed notebooks' stored outputs."""
    rows = []
    for o in outcomes:
        r = o.record or {}
        history = r.get("history") or []
        rows.append({
            "run": o.run.label, "seed": o.run.seed, "status": o.status, "message": o.message,
            "epochs": r.get("epochs"), "history_epochs": len(history),
            **{k: r.get(k) for k in ("top1_last", "top1_best", "top5_last", "teacher_top1", "wall_time_s")},
            "losses_last": history[-1]["losses"] if history else None,
        })
    return json.dumps(rows, indent=1, default=str)


# --- selecting outcomes ---------------------------------------------------------------------------
def completed(outcomes: Sequence[Outcome], method: str | None = None,
              seed: int | None = None) -> list[Outcome]:
    """The outcomes that did not fail, optionally of one ``method`` and one ``seed``."""
    return [o for o in outcomes if o.ok and (method is None or o.run.variant.method == method)
            and (seed is None or o.run.seed == seed)]


def records_of(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """The completed run records (dicts) of ``outcomes``."""
    return [o.record for o in outcomes if o.ok and o.record]


def read_records(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The run records (dicts, with their history) at ``paths`` (e.g. a ``load_records`` frame's ``path``)."""
    return [r for r in (read_record(Path(p)) for p in paths) if r is not None]


def failures(outcomes: Sequence[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if not o.ok]


def first_seed(params: Parameters) -> Callable[[Run], bool]:
    """``need_checkpoint`` for :func:`~kdlib.study.grid.run_grid`: the figures load the models of the first
    seed only."""
    return lambda run: run.seed == params.seeds[0]


def find(outcomes: Sequence[Outcome], method: str, variant: str = "default", seed: int | None = None,
         pair: Pair | None = None, ok: bool = True) -> Outcome | None:
    """The first completed outcome of ``method/variant`` (and ``seed``, ``pair`` when given); with ``ok``
    False, the first that did not complete."""
    for o in outcomes:
        if o.ok != ok or o.run.variant.method != method or o.run.variant.variant != variant:
            continue
        if seed is not None and o.run.seed != seed:
            continue
        if pair is not None and o.run.variant.needs_teacher and o.run.pair != pair:
            continue
        if pair is not None and o.run.pair.student != pair.student:
            continue
        return o
    return None


# --- trained models for figures -------------------------------------------------------------------
def trained(outcomes: Sequence[Outcome], method: str, variant: str = "default",
            seed: int | None = None) -> Any:
    """The trained distiller of ``method/variant`` (first seed unless given) among ``outcomes``; raises
    ``LookupError`` naming what to add when the run is not there or failed."""
    found = find(outcomes, method, variant, seed)
    failed = find(outcomes, method, variant, seed, ok=False) if found is None else None
    if failed is not None:
        raise LookupError(f"the run of {method}/{variant} did not complete ({failed.status}: "
                          f"{failed.message}); run the notebook again once that is resolved")
    if found is None:
        raise LookupError(f"no completed run of {method}/{variant} among this notebook's runs: add "
                          f"'{method}' to baselines (or the variant to variants), or see the failures above")
    return load_distiller(found)


def load_distiller(run: Run | Outcome, device: str = "cpu") -> Any:
    """The trained distiller of a finished run (student, teacher and the method's parts), in eval mode.

    Built from the run's configuration and loaded from its ``last.pt`` (which holds everything but the
    teacher; the teacher comes from its checkpoint)."""
    run = run.run if isinstance(run, Outcome) else run
    ckpt_path = run.out / CHECKPOINT
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"run {run.key} has no checkpoint at {relative(ckpt_path)}: train it again "
                                "(run_grid with need_checkpoint)")
    c = run.config
    spec = get_dataset_spec(c.dataset)
    teacher = None
    if c.teacher_ckpt:
        teacher = models.load_teacher(c.teacher_ckpt, c.teacher, num_classes=spec.num_classes)
    student = models.create_model(c.student, num_classes=spec.num_classes)
    config = make_config(c.method, c.variant).for_pair(c.teacher, c.student)  # as the run's plan did
    distiller = build_distiller(c.method, student, teacher, config, input_shape=spec.input_shape)
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    missing, unexpected = distiller.load_state_dict(state["distiller"], strict=False)
    if unexpected or [k for k in missing if not k.startswith("teacher.")]:
        raise RuntimeError(f"checkpoint {relative(ckpt_path)} does not match the run's distiller")
    epochs = state.get("record", {}).get("epochs")
    distiller.total_epochs = epochs
    return distiller.to(device).eval()


def sample_batch(dataset: str, n: int = 128,
                 data_root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of a class-balanced test subset (no augmentation): a fixed batch for figures."""

    data = load_data(dataset, data_root, batch_size=n, eval_batch_size=n, subset=n, eval_subset=n, workers=0)
    return next(iter(data.test))


# --- teachers -------------------------------------------------------------------------------------
def load_teacher_of(params: Parameters, pair: Pair | None = None, device: str = "cpu") -> torch.nn.Module:
    """The frozen teacher of ``pair`` (default: the first pair), in eval mode."""

    pair = pair or params.pairs[0]
    ckpt = params.teacher_ckpts[pair.teacher]
    net = models.load_teacher(ckpt, pair.teacher, num_classes=get_dataset_spec(params.dataset).num_classes)
    return net.to(device).eval()


def teacher_runs(params: Parameters) -> list[Run]:
    """The ``ce`` runs that train each distinct teacher of ``params.pairs`` (first seed), for 00_teachers."""
    runs, seen = [], set()
    for pair in params.pairs:
        if pair.teacher in seen:
            continue
        seen.add(pair.teacher)
        variant = Variant("ce")
        key = f"{params.dataset}/{pair.teacher}"
        config = TrainConfig(
            method="ce", student=pair.teacher, dataset=params.dataset, out=params.out_dir / "teachers" / key,
            recipe=params.recipe, epochs=params.epochs, subset=params.subset, eval_subset=params.eval_subset,
            batch_size=params.batch_size, seed=params.seeds[0], device=params.device,
            data_root=params.data_root, workers=params.workers, progress=False,
        )
        runs.append(Run(config, variant, Pair(pair.teacher, pair.teacher), key, config_id_of(config)))
    return runs


def trained_teachers(outcomes: Sequence[Outcome], install_to: str | Path | None = None) -> dict[str, Path]:
    """``{arch: model.pt}`` of the teachers :func:`~kdlib.study.grid.run_grid` trained from
    :func:`teacher_runs`; with ``install_to``, each is first copied there (:func:`install_teacher`) and the
    copy is returned."""
    found = {}
    for outcome in outcomes:
        if not outcome.ok:
            continue
        ckpt = outcome.run.out / "model.pt"
        found[outcome.run.config.student] = install_teacher(outcome, install_to) if install_to else ckpt
    return found


def install_teacher(outcome: Outcome, teachers_dir: str | Path = TEACHERS_DIR) -> Path:
    """Copy a trained teacher's ``model.pt`` and ``record.json`` to ``teachers_dir/<dataset>/<arch>/``."""
    run = outcome.run
    target = repo_path(teachers_dir) / run.key
    target.mkdir(parents=True, exist_ok=True)
    for name in ("model.pt", RECORD):
        shutil.copyfile(run.out / name, target / name)
    return target / "model.pt"


def teacher_record(ckpt: str | Path) -> dict[str, Any] | None:
    """The training record stored beside a teacher checkpoint (``record.json``), if any."""
    return read_record(Path(ckpt).parent / RECORD)


def evaluate_teachers(params: Parameters) -> Any:
    """Top-1/top-5 of every teacher checkpoint of ``params`` on the (``eval_subset`` of the) test set."""
    import pandas as pd

    rows = []
    for arch, ckpt in params.teacher_ckpts.items():
        result = evaluate_checkpoint(arch, ckpt, params.dataset, data_root=params.data_root,
                                     eval_subset=params.eval_subset, device=params.device,
                                     workers=params.workers)
        record = teacher_record(ckpt) or {}
        rows.append({"teacher": arch, "checkpoint": relative(ckpt), "test images": result["n"],
                     "top-1": result["top1"], "top-5": result["top5"],
                     "recorded top-1 (full test set)": record.get("top1_last"),
                     "trained": (f"{record.get('epochs')} epochs ({record.get('recipe_name')}), "
                                 f"{record.get('subset') or 'all'} images, seed {record.get('seed')}")
                     if record else "released checkpoint",
                     "size (MB)": round(Path(ckpt).stat().st_size / 2**20, 2)})
    return pd.DataFrame(rows)
