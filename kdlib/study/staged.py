"""A staged protocol, a profile with ``stages`` (``notebooks/profiles/proxy_v2.json``), run as its stages:
teacher, then tuning, then final, without notebooks (``book/protocol_v2.md``).

- ``teacher``: one ``ce`` run of the teacher architecture, installed with its record in ``teachers_dir``
  (``<teachers_dir>/<dataset>/<arch>/model.pt``), where every student run reads it.
- ``tuning``: each tuned method's main weight times each multiplier (:func:`kdlib.comparison.candidates`) on
  the tuning seeds; records in ``<results_dir>/tuning/``.
- ``final``: each configuration at the weight :func:`kdlib.comparison.select_weights` chose on the validation
  top-1 of the tuning records (``ce`` has no weight), on the final seeds; records in ``<results_dir>/final/``.

Each stage is :func:`~kdlib.study.grid.run_grid`: a run whose completed (or diverged) record with the same
``config_id`` is in place is skipped and an interrupted run resumes from its ``last.pt``, so
:func:`reproduce_staged` continues where it stopped and, once every record is committed, trains nothing.
The final stage needs every tuning record: the weights are chosen from all of them, never from some.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlib import comparison, results
from kdlib.config import TrainConfig
from kdlib.paths import PROFILES_DIR, profile_file, relative, repo_path
from kdlib.record import config_id_of
from kdlib.study.grid import RECORD, Outcome, Run, read_record, run_grid, run_key
from kdlib.study.outcomes import install_teacher
from kdlib.study.parameters import Pair, Variant

log = logging.getLogger(__name__)

STAGES = ("teacher", "tuning", "final")
#: What each stage's object must hold (``common`` holds the rest of every run's settings).
REQUIRED = {
    "common": ("dataset", "pair", "recipe", "epochs", "subset", "val_subset", "device", "out_dir",
               "results_dir"),
    "teacher": ("method", "student", "seed", "teachers_dir"),
    "tuning": ("methods", "multipliers", "seeds"),
    "final": ("configurations", "seeds", "baselines", "alpha"),
}
#: The statuses a stage reads back; a diverged run is a result (it cannot be chosen, and is reported).
READ_STATUSES = ("completed", results.STATUS_DIVERGED)


@dataclass(frozen=True)
class Staged:
    """A staged profile's settings: ``common`` (every run's), and one object per stage."""

    name: str
    common: Mapping[str, Any]
    teacher: Mapping[str, Any]
    tuning: Mapping[str, Any]
    final: Mapping[str, Any]

    @property
    def pair(self) -> Pair:
        teacher, student = self.common["pair"].split("->")
        return Pair(teacher.strip(), student.strip())

    @property
    def results_dir(self) -> Path:
        return repo_path(self.common["results_dir"])

    @property
    def teachers_dir(self) -> Path:
        return repo_path(self.teacher["teachers_dir"])


def is_staged(name: str) -> bool:
    """Whether profile ``name`` is a staged protocol (has ``stages``); a name that is a path is a
    ``ValueError`` (:func:`~kdlib.paths.profile_file`)."""
    path = profile_file(name, PROFILES_DIR)
    try:
        return path.is_file() and "stages" in json.loads(path.read_text())
    except ValueError:
        return False


def load_staged(name: str) -> Staged:
    """Profile ``name``'s stages, each checked for the fields :data:`REQUIRED` names."""
    path = profile_file(name, PROFILES_DIR)
    stages = json.loads(path.read_text()).get("stages") if path.is_file() else None
    if not isinstance(stages, dict):
        raise ValueError(f"profile '{name}' is not a staged protocol ({relative(path)} has no 'stages')")
    missing = [f"{stage}.{key}" for stage, keys in REQUIRED.items() for key in keys
               if not isinstance(stages.get(stage), dict) or key not in stages[stage]]
    if missing:
        raise ValueError(f"profile '{name}': its stages lack {', '.join(missing)}")
    unknown = sorted(set(stages["tuning"]["methods"]) - set(comparison.MAIN_WEIGHTS))
    if unknown:
        raise ValueError(f"profile '{name}': tuning.methods {unknown} have no main weight "
                         f"(kdlib.comparison.MAIN_WEIGHTS: {', '.join(comparison.MAIN_WEIGHTS)})")
    return Staged(name, stages["common"], stages["teacher"], stages["tuning"], stages["final"])


def _config(s: Staged, out: Path, **fields: Any) -> TrainConfig:
    c = s.common
    common = {k: c.get(k) for k in ("dataset", "recipe", "epochs", "subset", "val_subset", "eval_subset",
                                    "device")}
    return TrainConfig(out=out, progress=False, **{**common, **c.get("train_options", {}), **fields})


def _run(s: Staged, stage: str, variant: Variant, seed: int, teacher_ckpt: Path) -> Run:
    """A student run of ``stage``, keyed ``<stage>/<dataset>/<recipe>/<teacher>-<student>/...``."""
    pair = s.pair
    key = f"{stage}/{run_key(s.common['dataset'], s.common['recipe'], pair, variant, seed)}"
    needs = variant.needs_teacher
    config = _config(s, repo_path(s.common["out_dir"]) / key, method=variant.method, student=pair.student,
                     teacher=pair.teacher if needs else None, teacher_ckpt=teacher_ckpt if needs else None,
                     variant=variant.overrides, seed=seed)
    return Run(config, variant, pair, key, config_id_of(config))


def teacher_run(s: Staged) -> Run:
    """The teacher's ``ce`` run (all training images but the validation split: ``subset`` None)."""
    t = s.teacher
    key = f"{s.common['dataset']}/{t['student']}"
    fields = {k: t[k] for k in ("subset", "epochs") if k in t}
    config = _config(s, repo_path(s.common["out_dir"]) / "teacher" / key,
                     **{**fields, "method": t["method"], "student": t["student"], "seed": t["seed"]})
    return Run(config, Variant(t["method"]), Pair(t["student"], t["student"]), key, config_id_of(config))


def teacher_checkpoint(s: Staged) -> Path:
    """Where the stage ``teacher`` installs its checkpoint (``<teachers_dir>/<dataset>/<arch>/model.pt``)."""
    return s.teachers_dir / s.common["dataset"] / s.teacher["student"] / "model.pt"


def tuning_runs(s: Staged, teacher_ckpt: Path) -> list[Run]:
    """Every tuning run: method × multiplier × tuning seed."""
    return [_run(s, "tuning", Variant(c["method"], tuple(sorted(c["overrides"].items()))), seed, teacher_ckpt)
            for method in s.tuning["methods"]
            for c in comparison.candidates(method, s.tuning["multipliers"])
            for seed in s.tuning["seeds"]]


def chosen_weights(s: Staged, records: Any = None) -> Any:
    """:func:`kdlib.comparison.select_weights` over the tuning records (completed and diverged)."""
    if records is None:
        records = results.load_records(s.results_dir / "tuning", statuses=READ_STATUSES)
    return comparison.select_weights(records, s.tuning["methods"], s.tuning["seeds"], s.tuning["multipliers"])


def final_runs(s: Staged, teacher_ckpt: Path, chosen: Any) -> list[Run]:
    """Every final run: each configuration at its chosen weight (``ce`` as it is) × final seed. A tuned
    method none of whose weights could be chosen (all diverged) is left out, as the protocol says."""
    weights = {row.method: row.overrides for row in chosen.itertuples()}
    runs = []
    for method in s.final["configurations"]:
        if method in weights and weights[method] is None:
            log.warning("%s: every tuned weight diverged or is missing; not run in the final stage", method)
            continue
        variant = Variant(method, tuple(sorted((weights.get(method) or {}).items())))
        runs.extend(_run(s, "final", variant, seed, teacher_ckpt) for seed in s.final["seeds"])
    return runs


def planned_runs(s: Staged) -> list[Run]:
    """The student runs the protocol plans as far as its records decide: every tuning run, and the final
    runs once every tuning record is in place (their weights are chosen from them)."""
    if not teacher_checkpoint(s).is_file():
        return []
    tuning = tuning_runs(s, teacher_checkpoint(s))
    if _missing(s, tuning):
        return tuning
    return tuning + final_runs(s, teacher_checkpoint(s), chosen_weights(s))


def _missing(s: Staged, runs: Sequence[Run]) -> list[str]:
    """The keys of ``runs`` without a completed or diverged record of their ``config_id`` in the results
    folder."""
    done = [read_record(s.results_dir / r.key / RECORD) or {} for r in runs]
    return [r.key for r, d in zip(runs, done, strict=True)
            if d.get("config_id") != r.config_id or d.get("status") not in READ_STATUSES]


def _teacher(s: Staged, threads: int | None) -> Outcome | Path:
    """The installed teacher checkpoint, trained first unless its record (same ``config_id``) is in place."""
    run = teacher_run(s)
    ckpt = teacher_checkpoint(s)
    installed = read_record(ckpt.parent / RECORD)
    if ckpt.is_file() and installed and installed.get("config_id") == run.config_id:
        print(f"[teacher] {run.config.student}: skipped ({relative(ckpt)})", flush=True)
        return ckpt
    [outcome] = run_grid([run], None, jobs=1, threads=threads)
    return install_teacher(outcome, s.teachers_dir) if outcome.ok else outcome


def reproduce_staged(name: str, jobs: int = 1, threads: int | None = None,
                     stages: Sequence[str] = STAGES) -> list[Outcome]:
    """Run ``stages`` of staged profile ``name`` in order (see the module docstring). Returns the outcomes of
    the student runs; raises ``RuntimeError`` naming the failures when a stage cannot be completed (the
    next stage needs it whole)."""
    s = load_staged(name)
    unknown = [x for x in stages if x not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
    ckpt = teacher_checkpoint(s)
    if "teacher" in stages:
        got = _teacher(s, threads)
        if isinstance(got, Outcome):
            raise RuntimeError(f"the teacher did not train: {got.status} ({got.message})")
    if not ckpt.is_file():
        raise RuntimeError(f"no teacher at {relative(ckpt)}: run the 'teacher' stage first")
    outcomes: list[Outcome] = []
    if "tuning" in stages:
        outcomes += _stage(s, "tuning", tuning_runs(s, ckpt), jobs, threads)
    if "final" in stages:
        missing = _missing(s, tuning_runs(s, ckpt))
        if missing:
            raise RuntimeError(f"{len(missing)} tuning records are missing (first: {missing[0]}); the final "
                               "stage chooses weights from all of them: run the 'tuning' stage first")
        chosen = chosen_weights(s)
        outcomes += _stage(s, "final", final_runs(s, ckpt, chosen), jobs, threads)
    return outcomes


def _stage(s: Staged, stage: str, runs: list[Run], jobs: int, threads: int | None) -> list[Outcome]:
    print(f"[{stage}] {len(runs)} runs → {relative(s.results_dir / stage)}", flush=True)
    outcomes = run_grid(runs, s.results_dir, jobs=jobs, threads=threads)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        names = "; ".join(f"{o.run.key}: {o.message}" for o in failed[:3])
        raise RuntimeError(f"{len(failed)} {stage} runs failed (run again to resume them): {names}")
    return outcomes
