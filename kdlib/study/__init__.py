"""The study's grid: notebook parameters → validated runs → trained (or reused) records.

What the notebooks and ``make reproduce`` share, by audience:

- :mod:`kdlib.study.parameters`: every notebook parameter checked (type and range) before anything is loaded
  or trained (:func:`~kdlib.study.parameters.check_parameters`); a bad value raises ``ValueError`` naming
  the parameter and the allowed values.
- :mod:`kdlib.study.grid`: the runs of a notebook planned (:func:`~kdlib.study.grid.plan_runs`), trained
  unless done already (:func:`~kdlib.study.grid.run_grid`, resumable) and committed records checked by
  retraining (:func:`~kdlib.study.grid.verify`).
- :mod:`kdlib.study.outcomes`: what the notebooks read from a grid: tables, records, trained models
  (:func:`~kdlib.study.outcomes.load_distiller`), a fixed batch (:func:`~kdlib.study.outcomes.sample_batch`)
  and the teachers.
- :mod:`kdlib.study.profiles`: the full parameters of each profile (``notebooks/profiles/<profile>.json``),
  their execution through papermill (:func:`~kdlib.study.profiles.reproduce`) and their cost
  (:func:`~kdlib.study.profiles.estimate`).
- :mod:`kdlib.study.cli`: ``python -m kdlib.study reproduce|params|estimate|refresh|verify``.

The repository's paths are :mod:`kdlib.paths`. Every name the notebooks use is importable from here
(``from kdlib import study; study.check_parameters(...)``).
"""

from kdlib.paths import (
    BENCH_CSV,
    DATA_DIR,
    NOTEBOOKS_DIR,
    PROFILES_DIR,
    REPO,
    REPRODUCE_DIR,
    RESULTS_DIR,
    RUNS_DIR,
    TEACHERS_DIR,
    relative,
    repo_path,
)
from kdlib.study.cli import main
from kdlib.study.grid import (
    CHECKPOINT,
    RECORD,
    REPRODUCED,
    Outcome,
    Run,
    grid_cells,
    plan_runs,
    run_grid,
    run_key,
    train_argv,
    verify,
)
from kdlib.study.outcomes import (
    completed,
    evaluate_teachers,
    failures,
    find,
    first_seed,
    install_teacher,
    load_distiller,
    load_teacher_of,
    metrics,
    outcomes_table,
    read_records,
    records_frame,
    records_of,
    sample_batch,
    setup,
    show,
    teacher_record,
    teacher_runs,
    trained,
    trained_teachers,
)
from kdlib.study.parameters import (
    DEVICES,
    NOTEBOOK_METHODS,
    NOTEBOOK_ONLY,
    NOTEBOOKS,
    SMOKE_LABEL,
    Pair,
    ParameterError,
    Parameters,
    Variant,
    check_notebook_parameters,
    check_parameter_names,
    check_parameters,
    parameter_defaults,
    parse_pairs,
    parse_seeds,
    parse_variants,
    teacher_checkpoint,
)
from kdlib.study.profiles import (
    DATASET_SIZES,
    PROFILES,
    bench_throughput,
    estimate,
    load_profile,
    notebook_parameters,
    profile_results_dir,
    profile_runs,
    refresh,
    reproduce,
)

__all__ = [
    # kdlib.paths
    "BENCH_CSV", "DATA_DIR", "NOTEBOOKS_DIR", "PROFILES_DIR", "REPO", "REPRODUCE_DIR", "RESULTS_DIR",
    "RUNS_DIR", "TEACHERS_DIR", "relative", "repo_path",
    # parameters
    "DEVICES", "NOTEBOOK_METHODS", "NOTEBOOK_ONLY", "NOTEBOOKS", "SMOKE_LABEL", "Pair", "Parameters",
    "ParameterError", "Variant", "check_notebook_parameters", "check_parameter_names",
    "check_parameters", "parameter_defaults", "parse_pairs",
    "parse_seeds", "parse_variants", "teacher_checkpoint",
    # grid
    "CHECKPOINT", "RECORD", "REPRODUCED", "Outcome", "Run", "train_argv", "grid_cells", "plan_runs",
    "run_grid", "run_key", "verify",
    # outcomes
    "completed", "evaluate_teachers", "failures", "find", "first_seed", "install_teacher", "load_distiller",
    "load_teacher_of", "metrics", "outcomes_table", "read_records", "records_frame", "records_of",
    "sample_batch", "setup", "show", "teacher_record", "teacher_runs", "trained", "trained_teachers",
    # profiles
    "DATASET_SIZES", "PROFILES", "bench_throughput", "estimate", "load_profile", "notebook_parameters",
    "profile_results_dir", "profile_runs", "refresh", "reproduce",
    # the command
    "main",
]
