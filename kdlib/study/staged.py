"""A staged protocol, a profile with ``stages`` (``notebooks/profiles/proxy_v2.json``), run as its stages:
teacher, then tuning, then final, without notebooks (``book/protocol_v2.md``, ``book/protocol_v3.md``).

- ``teacher``: a ``ce`` run of the teacher architecture per teacher seed (``seed``, or ``seeds``), installed
  with its record in ``teachers_dir`` (``<teachers_dir>/<dataset>/<arch>/model.pt`` for one ``seed``,
  ``.../<arch>/seed<k>/model.pt`` for each of ``seeds``), where every student run reads it.
- ``tuning``: each tuned method's main weight times each multiplier (:func:`kdlib.comparison.candidates`) on
  the tuning seeds; records in ``<results_dir>/tuning/``. With ``extend`` (``{"factor": 4, "limit": 64}``)
  the grid of each method grows by the bracketing rule (:func:`kdlib.comparison.bracket`) until its chosen
  weight is interior or at the limit; ``fixed`` gives options every run of a method takes (``{"dkd":
  {"warmup": 1}}``).
- ``final``: each configuration at the weight :func:`kdlib.comparison.select_weights` chose on the validation
  top-1 of the tuning records (``ce`` has no weight), on the final seeds; records in ``<results_dir>/final/``.
  A configuration is a method name, or ``{"name", "method", "set"}``: that method at its chosen weight with
  the options ``set`` changes (an ablation). ``extra_seeds`` (``{"seeds": [...], "configurations": [...]}``)
  runs some configurations on more seeds.

With ``vary`` in ``common`` (``["teacher", "subset"]``), what a seed changes besides the initialisation and
the batch order: seed ``s`` distils from teacher ``s mod T`` of the ``T`` teacher seeds, and trains on the
class-balanced draw ``subset_seed = s`` of the training images (the validation and test images never
change). Final runs go seed by seed (every configuration of seed 0, then of seed 1, ...), so that a study
interrupted and resumed on another machine splits by seeds, not by configurations.

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
#: What each stage's object must hold (``common`` holds the rest of every run's settings; the teacher also
#: needs ``seed`` or ``seeds``).
REQUIRED = {
    "common": ("dataset", "pair", "recipe", "epochs", "subset", "val_subset", "device", "out_dir",
               "results_dir"),
    "teacher": ("method", "student", "teachers_dir"),
    "tuning": ("methods", "multipliers", "seeds"),
    "final": ("configurations", "seeds", "baselines", "alpha"),
}
#: What ``common.vary`` may name: what a run's seed changes besides the initialisation and batch order.
VARY = ("teacher", "subset")
#: The statuses a stage reads back; a diverged run is a result (it cannot be chosen, and is reported).
READ_STATUSES = ("completed", results.STATUS_DIVERGED)


@dataclass(frozen=True)
class Configuration:
    """A final configuration: ``method`` at its chosen weight, with the options ``set`` changes (none for a
    headline configuration; an ablation changes one thing). ``name`` labels it in the study's tables."""

    name: str
    method: str
    set: Mapping[str, Any]


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

    @property
    def teacher_seeds(self) -> list[int]:
        """The teachers' seeds (``seeds``, or the one ``seed``)."""
        return list(self.teacher["seeds"]) if "seeds" in self.teacher else [self.teacher["seed"]]

    @property
    def vary(self) -> tuple[str, ...]:
        return tuple(self.common.get("vary", ()))

    @property
    def fixed(self) -> dict[str, dict[str, Any]]:
        """Options every tuning and final run of a method takes, by method."""
        return {m: dict(o) for m, o in self.tuning.get("fixed", {}).items()}

    @property
    def configurations(self) -> list[Configuration]:
        return [Configuration(c, c, {}) if isinstance(c, str) else Configuration(c["name"], c["method"],
                                                                                 c.get("set", {}))
                for c in self.final["configurations"]]


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
    if isinstance(stages.get("teacher"), dict) and not {"seed", "seeds"} & set(stages["teacher"]):
        missing.append("teacher.seed")
    if missing:
        raise ValueError(f"profile '{name}': its stages lack {', '.join(missing)}")
    unknown = sorted(set(stages["tuning"]["methods"]) - set(comparison.MAIN_WEIGHTS))
    if unknown:
        raise ValueError(f"profile '{name}': tuning.methods {unknown} have no main weight "
                         f"(kdlib.comparison.MAIN_WEIGHTS: {', '.join(comparison.MAIN_WEIGHTS)})")
    s = Staged(name, stages["common"], stages["teacher"], stages["tuning"], stages["final"])
    if set(s.vary) - set(VARY):
        raise ValueError(f"profile '{name}': common.vary {sorted(set(s.vary) - set(VARY))} is not one of "
                         f"{', '.join(VARY)}")
    untuned = sorted({c.method for c in s.configurations if c.set} - set(s.tuning["methods"]))
    if untuned:
        raise ValueError(f"profile '{name}': final configurations change the chosen weight of {untuned}, "
                         "which tuning.methods does not tune")
    return s


def _config(s: Staged, out: Path, **fields: Any) -> TrainConfig:
    c = s.common
    common = {k: c.get(k) for k in ("dataset", "recipe", "epochs", "subset", "val_subset", "eval_subset",
                                    "device")}
    return TrainConfig(out=out, progress=False, **{**common, **c.get("train_options", {}), **fields})


def _run(s: Staged, stage: str, variant: Variant, seed: int) -> Run:
    """A student run of ``stage``, keyed ``<stage>/<dataset>/<recipe>/<teacher>-<student>/...``: its teacher
    and its draw of the training images follow ``seed`` where the profile varies them (``common.vary``)."""
    pair = s.pair
    key = f"{stage}/{run_key(s.common['dataset'], s.common['recipe'], pair, variant, seed)}"
    needs = variant.needs_teacher
    teacher_seed = s.teacher_seeds[seed % len(s.teacher_seeds) if "teacher" in s.vary else 0]
    extra = {"subset_seed": seed} if "subset" in s.vary else {}
    config = _config(s, repo_path(s.common["out_dir"]) / key, method=variant.method, student=pair.student,
                     teacher=pair.teacher if needs else None,
                     teacher_ckpt=teacher_checkpoint(s, teacher_seed) if needs else None,
                     variant=variant.overrides, seed=seed, **extra)
    return Run(config, variant, pair, key, config_id_of(config))


def teacher_run(s: Staged, seed: int | None = None) -> Run:
    """The ``ce`` run of the teacher of seed ``seed`` (default: the first), on all training images but the
    validation split (``subset`` None)."""
    t = s.teacher
    seed = s.teacher_seeds[0] if seed is None else seed
    key = f"{s.common['dataset']}/{t['student']}" + ("" if "seed" in t else f"/seed{seed}")
    fields = {k: t[k] for k in ("subset", "epochs") if k in t}
    config = _config(s, repo_path(s.common["out_dir"]) / "teacher" / key,
                     **{**fields, "method": t["method"], "student": t["student"], "seed": seed})
    return Run(config, Variant(t["method"]), Pair(t["student"], t["student"]), key, config_id_of(config))


def teacher_checkpoint(s: Staged, seed: int | None = None) -> Path:
    """Where the stage ``teacher`` installs the checkpoint of the teacher of seed ``seed`` (default: the
    first): ``<teachers_dir>/<dataset>/<arch>[/seed<k>]/model.pt``."""
    return s.teachers_dir / teacher_run(s, seed).key / "model.pt"


def _teachers_ready(s: Staged) -> bool:
    return all(teacher_checkpoint(s, seed).is_file() for seed in s.teacher_seeds)


def tuning_state(s: Staged, records: Any = None) -> dict[str, tuple[list[float], str]]:
    """Each tuned method's multipliers so far and where its tuning stands: the profile's multipliers, grown
    by :func:`kdlib.comparison.bracket` when the profile has ``extend``; without it, the fixed grid
    (:data:`~kdlib.comparison.WAITING` until its records are in place, else
    :data:`~kdlib.comparison.INTERIOR` or :data:`~kdlib.comparison.AT_LIMIT` by where the choice fell)."""
    records = _tuning_records(s) if records is None else records
    extend = s.tuning.get("extend", {})
    return {method: comparison.bracket(records, method, s.tuning["seeds"], s.tuning["multipliers"],
                                       extend.get("factor"), extend.get("limit"), s.fixed.get(method))
            for method in s.tuning["methods"]}


def _tuning_records(s: Staged) -> Any:
    """The tuning records in place (none before the first has landed)."""
    folder = s.results_dir / "tuning"
    return results.load_records(folder if folder.is_dir() else [], statuses=READ_STATUSES)


def tuning_runs(s: Staged, records: Any = None) -> list[Run]:
    """Every tuning run the records decide so far: method × multiplier (:func:`tuning_state`) × tuning
    seed."""
    state = tuning_state(s, records)
    return [_run(s, "tuning", Variant(c["method"], tuple(sorted(c["overrides"].items()))), seed)
            for method in s.tuning["methods"]
            for c in comparison.candidates(method, state[method][0], s.fixed.get(method))
            for seed in s.tuning["seeds"]]


def chosen_weights(s: Staged, records: Any = None) -> Any:
    """:func:`kdlib.comparison.select_weights` over the tuning records (completed and diverged), each method
    over the multipliers its tuning reached (with a ``state`` column: :func:`tuning_state`)."""
    records = _tuning_records(s) if records is None else records
    state = tuning_state(s, records)
    chosen = comparison.select_weights(records, s.tuning["methods"], s.tuning["seeds"],
                                       {m: grid for m, (grid, _) in state.items()}, s.fixed)
    return chosen.assign(state=[state[m][1] for m in chosen["method"]])


def final_variants(s: Staged, chosen: Any) -> list[tuple[str, Variant]]:
    """Each final configuration's name and what it runs: its method at the chosen weight (``ce`` as it is)
    with the profile's fixed options and the configuration's ``set``. A tuned method none of whose weights
    could be chosen (all diverged) is left out, as the protocol says."""
    weights = {row.method: row.overrides for row in chosen.itertuples()}
    variants = []
    for c in s.configurations:
        if c.method in weights and weights[c.method] is None:
            log.warning("%s: every tuned weight diverged or is missing; not run in the final stage", c.name)
            continue
        options = {**s.fixed.get(c.method, {}), **(weights.get(c.method) or {}), **c.set}
        variants.append((c.name, Variant(c.method, tuple(sorted(options.items())))))
    return variants


def final_runs(s: Staged, chosen: Any) -> list[Run]:
    """Every final run, seed by seed: each configuration (:func:`final_variants`) on the final seeds, then
    the ``extra_seeds`` configurations on theirs."""
    variants = final_variants(s, chosen)
    extra = s.final.get("extra_seeds", {})
    more = [v for name, v in variants if name in extra.get("configurations", [])]
    blocks = [(s.final["seeds"], [v for _, v in variants]), (extra.get("seeds", []), more)]
    return [_run(s, "final", variant, seed) for seeds, chosen_variants in blocks
            for seed in seeds for variant in chosen_variants]


def planned_runs(s: Staged) -> list[Run]:
    """The student runs the protocol plans as far as its records decide: every tuning run (as far as the
    bracketing rule has grown the grids), and the final runs once every tuning record is in place (their
    weights are chosen from them)."""
    if not _teachers_ready(s):
        return []
    tuning = tuning_runs(s)
    if _missing(s, tuning):
        return tuning
    return tuning + final_runs(s, chosen_weights(s))


def _missing(s: Staged, runs: Sequence[Run]) -> list[str]:
    """The keys of ``runs`` without a completed or diverged record of their ``config_id`` in the results
    folder."""
    done = [read_record(s.results_dir / r.key / RECORD) or {} for r in runs]
    return [r.key for r, d in zip(runs, done, strict=True)
            if d.get("config_id") != r.config_id or d.get("status") not in READ_STATUSES]


def _teachers(s: Staged, threads: int | None) -> None:
    """Train and install every teacher whose record (same ``config_id``) is not in place; a teacher that does
    not train is a ``RuntimeError``."""
    for seed in s.teacher_seeds:
        run = teacher_run(s, seed)
        ckpt = teacher_checkpoint(s, seed)
        installed = read_record(ckpt.parent / RECORD)
        if ckpt.is_file() and installed and installed.get("config_id") == run.config_id:
            print(f"[teacher] {run.config.student} seed {seed}: skipped ({relative(ckpt)})", flush=True)
            continue
        [outcome] = run_grid([run], None, jobs=1, threads=threads)
        if not outcome.ok:
            raise RuntimeError(f"the teacher of seed {seed} did not train: {outcome.status} "
                               f"({outcome.message})")
        install_teacher(outcome, s.teachers_dir)


def reproduce_staged(name: str, jobs: int = 1, threads: int | None = None,
                     stages: Sequence[str] = STAGES) -> list[Outcome]:
    """Run ``stages`` of staged profile ``name`` in order (see the module docstring). Returns the outcomes of
    the student runs; raises ``RuntimeError`` naming the failures when a stage cannot be completed (the
    next stage needs it whole). The tuning stage runs again while the bracketing rule grows a grid."""
    s = load_staged(name)
    unknown = [x for x in stages if x not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
    if "teacher" in stages:
        _teachers(s, threads)
    if not _teachers_ready(s):
        missing = next(teacher_checkpoint(s, seed) for seed in s.teacher_seeds
                       if not teacher_checkpoint(s, seed).is_file())
        raise RuntimeError(f"no teacher at {relative(missing)}: run the 'teacher' stage first")
    outcomes: list[Outcome] = []
    if "tuning" in stages:
        runs, seen = tuning_runs(s), set()
        while runs:  # the runs the records have planned so far, then those a grown grid adds
            outcomes += _stage(s, "tuning", runs, jobs, threads)
            seen |= {r.key for r in runs}
            runs = [r for r in tuning_runs(s) if r.key not in seen]
    if "final" in stages:
        missing = _missing(s, tuning_runs(s))
        if missing:
            raise RuntimeError(f"{len(missing)} tuning records are missing (first: {missing[0]}); the final "
                               "stage chooses weights from all of them: run the 'tuning' stage first")
        outcomes += _stage(s, "final", final_runs(s, chosen_weights(s)), jobs, threads)
    return outcomes


def _stage(s: Staged, stage: str, runs: list[Run], jobs: int, threads: int | None) -> list[Outcome]:
    print(f"[{stage}] {len(runs)} runs → {relative(s.results_dir / stage)}", flush=True)
    outcomes = run_grid(runs, s.results_dir, jobs=jobs, threads=threads)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        names = "; ".join(f"{o.run.key}: {o.message}" for o in failed[:3])
        raise RuntimeError(f"{len(failed)} {stage} runs failed (run again to resume them): {names}")
    return outcomes
