"""Notebook parameters: every value checked (type and range) before anything is loaded or trained.

:func:`check_parameters` turns a notebook's parameters into :class:`Parameters` (absolute paths, parsed
:class:`Pair` and :class:`Variant` lists, the teachers' checkpoints found); a bad value raises ``ValueError``
naming the parameter and the allowed values. :func:`check_notebook_parameters` does the same for a notebook's
parameter dict, its method filled in from :data:`NOTEBOOK_METHODS`; :func:`parameter_defaults` reads a
notebook's ``parameters`` cell.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlib import curves, models
from kdlib.config import TrainConfig, check_option
from kdlib.data import DATASETS, get_dataset_spec
from kdlib.distributed import resolve_device
from kdlib.methods import get_method, make_config, variant_string
from kdlib.paths import DATA_DIR, NOTEBOOKS_DIR, TEACHERS_DIR, relative, repo_path
from kdlib.recipes import RECIPES, get_recipe
from kdlib.results import run_variant
from kdlib.weights import TORCHVISION, is_torchvision

#: The study's notebooks in order, each with the method it is about (None for several or none).
NOTEBOOK_METHODS: dict[str, str | None] = {
    "00_teachers": None,
    "01_ickd": "ickd",
    "02_ccs": "ccs",
    "03_cd": "cd",
    "04_cwt": "cwt",
    "05_iekd": "iekd",
    "06_head_to_head": None,
}
#: The notebooks, by name (``notebooks/<name>.ipynb``).
NOTEBOOKS = tuple(NOTEBOOK_METHODS)
#: The label of every notebook's default run.
SMOKE_LABEL = "smoke (CI default)"
DEVICES = ("auto", "cpu", "cuda")
#: Parameters a notebook takes besides those of ``check_parameters`` (the notebook handles them).
NOTEBOOK_ONLY = ("train", "install", "records_dir", "baseline")
#: :class:`~kdlib.config.TrainConfig` fields that the grid sets for each run from the other parameters;
#: ``train_options`` may set the others.
GRID_FIELDS = frozenset({
    "method", "student", "dataset", "out", "teacher", "teacher_ckpt", "recipe", "epochs", "subset",
    "eval_subset", "batch_size", "seed", "device", "variant", "data_root", "workers", "progress",
    "student_weights", "resume",
})


@dataclass(frozen=True)
class Pair:
    """A teacher → student pair; ``teacher`` is None for runs without a teacher."""

    teacher: str
    student: str

    @property
    def name(self) -> str:
        return f"{self.teacher}-{self.student}"

    def __str__(self) -> str:
        return f"{self.teacher} → {self.student}"


@dataclass(frozen=True)
class Variant:
    """A method with option overrides; ``options`` as given, ``variant`` the canonical string.

    ``student_weights``: the student's initial weights (``torchvision`` or a file; None: random), a run
    option rather than a method one; it is part of ``variant`` (:func:`kdlib.results.run_variant`), so a
    pretrained student is a variant of its own (ICKD's ImageNet run: the official ImageNet fork
    initialises the student from torchvision's pretrained ResNet18).
    """

    method: str
    options: tuple[tuple[str, Any], ...] = ()
    student_weights: str | None = None

    @property
    def overrides(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def variant(self) -> str:
        return run_variant(variant_string(make_config(self.method, self.overrides)), self.student_weights)

    @property
    def label(self) -> str:
        return f"{self.method}/{self.variant}"

    @property
    def needs_teacher(self) -> bool:
        return get_method(self.method).needs_teacher


@dataclass
class Parameters:
    """Validated notebook parameters (see :func:`check_parameters`); paths are absolute."""

    dataset: str
    pairs: list[Pair]
    epochs: int | None
    recipe: str
    seeds: list[int]
    variants: list[Variant]
    device: str
    subset: int | None
    out_dir: Path
    eval_subset: int | None = None
    baselines: list[Variant] = field(default_factory=list)
    results_dir: Path | None = None
    teachers_dir: Path = TEACHERS_DIR
    teacher_ckpts: dict[str, Path] = field(default_factory=dict)
    jobs: int = 1
    workers: int = 0
    threads: int | None = None
    batch_size: int | None = None
    data_root: Path | None = None
    label: str = SMOKE_LABEL
    #: Options of every run beyond the grid's (``TrainConfig`` fields, e.g. ``precision``).
    train_options: dict[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> Variant:
        """The first variant of the grid. A method notebook draws its figures from it and pairs the other
        variants against it (``default`` in most profiles; ImageNet's ICKD and CD grids have none)."""
        if not self.variants:
            raise LookupError("parameter 'variants' is empty: the figures need a variant of the method")
        return self.variants[0]

    def summary(self) -> dict[str, Any]:
        """The parameters as plain values with repo-relative paths (what a notebook prints)."""
        return {
            "label": self.label, "dataset": self.dataset, "pairs": [str(p) for p in self.pairs],
            "epochs": self.epochs, "recipe": self.recipe, "seeds": self.seeds,
            "variants": [v.label for v in self.variants], "baselines": [v.label for v in self.baselines],
            "device": self.device, "subset": self.subset, "eval_subset": self.eval_subset,
            "out_dir": relative(self.out_dir),
            "results_dir": relative(self.results_dir) if self.results_dir else None,
            "teachers": {k: relative(v) for k, v in self.teacher_ckpts.items()},
            "jobs": self.jobs, **({"train_options": self.train_options} if self.train_options else {}),
        }


# --- single values --------------------------------------------------------------------------------
class ParameterError(ValueError):
    """A bad notebook parameter. In a notebook (IPython reads ``_render_traceback_``) its traceback is the
    message alone, so the first error line papermill prints names the parameter and the allowed values."""

    def _render_traceback_(self) -> list[str]:
        return [f"ParameterError: {self}"]


def bad_parameter(name: str, message: str) -> ParameterError:
    """The error of a bad parameter value: ``parameter '<name>': <message>``."""
    return ParameterError(f"parameter '{name}': {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_int(name: str, value: Any, minimum: int) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or value < minimum:
        raise bad_parameter(name, f"must be an integer >= {minimum} or None, got {value!r}")
    return value


def _int(name: str, value: Any, minimum: int) -> int:
    if not _is_int(value) or value < minimum:
        raise bad_parameter(name, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _choice(name: str, value: Any, choices: Mapping[str, Any]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise bad_parameter(name, f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")
    return value


def _items(name: str, value: Any, separator: str) -> list[Any]:
    """A list parameter: a list/tuple, or a string of items separated by ``separator`` (papermill ``-p``)."""
    if isinstance(value, str) and value.strip().startswith("["):  # a JSON or Python list given to -p
        value = _literal(name, value)
    if isinstance(value, str):
        return [v.strip() for v in value.split(separator) if v.strip()]
    if isinstance(value, list | tuple):
        return list(value)
    raise bad_parameter(name, f"must be a list (or a '{separator}'-separated string), got {value!r}")


def _literal(name: str, text: str) -> Any:
    """A list written as JSON or as a Python literal (``-p variants '["default", {"variant": "paper"}]'``)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise bad_parameter(name, f"{text!r} is neither a JSON nor a Python list") from None


# --- lists: pairs, variants, seeds ----------------------------------------------------------------
def parse_pairs(value: Any) -> list[Pair]:
    """Pairs from ``["resnet56->resnet20", ["wrn_40_2", "wrn_16_2"], {"teacher": ..., "student": ...}]``
    (or one string, pairs separated by ``;``); architecture names are checked."""
    pairs = []
    available = models.available()
    for item in _items("pairs", value, ";"):
        if isinstance(item, str):
            parts = [p.strip() for p in item.replace("→", "->").split("->")]
        elif isinstance(item, list | tuple):
            parts = list(item)
        elif isinstance(item, Mapping):
            parts = [item.get("teacher"), item.get("student")]
        else:
            parts = []
        if len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
            raise bad_parameter("pairs",
                                f"each pair is 'teacher->student' or [teacher, student], got {item!r}")
        for arch in parts:
            if arch not in available:
                choices = ", ".join(available)
                raise bad_parameter("pairs", f"unknown model '{arch}' in {item!r}; choose one of: {choices}")
        pairs.append(Pair(*parts))
    if not pairs:
        raise bad_parameter("pairs", "needs at least one teacher->student pair")
    if len(set(pairs)) != len(pairs):
        raise bad_parameter("pairs", f"lists a pair twice: {[str(p) for p in pairs]}")
    return pairs


def _variant_options(name: str, method: str, text: Any) -> dict[str, Any]:
    """The options of one variant entry: a mapping, ``default`` or ``key=value,...``."""
    if isinstance(text, Mapping):
        return dict(text)
    if not isinstance(text, str):
        raise bad_parameter(name, f"each entry is 'default', 'key=value,...' or a mapping, got {text!r}")
    options = {}
    if text.strip() not in ("", "default"):
        for part in text.split(","):
            key, eq, val = part.partition("=")
            if not eq or not key.strip():
                raise bad_parameter(name, f"invalid option '{part}' of method '{method}'; expected key=value")
            options[key.strip()] = val.strip()
    return options


def _student_weights(name: str, value: Any) -> str | None:
    """The ``student_weights`` run option: None, ``torchvision`` or an existing file (repo-relative)."""
    if value is None:
        return None
    weights = str(value).strip()
    if is_torchvision(weights):
        return weights
    weights = str(repo_path(weights))
    if not Path(weights).is_file():
        raise bad_parameter(name, f"student_weights: no file '{weights}' (or '{TORCHVISION}')")
    return weights


def _parse_variant(name: str, method: str, text: Any) -> Variant:
    """One variant entry: the method's options, and ``student_weights`` (a run option) when given."""
    options = _variant_options(name, method, text)
    student_weights = _student_weights(name, options.pop("student_weights", None))
    try:
        make_config(method, options)
    except (TypeError, ValueError) as error:
        raise bad_parameter(name, f"{error} (in {text!r})") from None
    return Variant(method, tuple(sorted(options.items())), student_weights)


def _method_entry(name: str, item: Any) -> tuple[str, Any]:
    """``method[:options]`` (or a mapping with a ``method`` key) → the checked method and its options."""
    if isinstance(item, Mapping):
        item = dict(item)
        method, options = item.pop("method", None), item
    elif isinstance(item, str):
        method, _, options = item.partition(":")
    else:
        raise bad_parameter(name, f"each entry is 'method' or 'method:key=value,...', got {item!r}")
    method = str(method).strip()
    try:
        get_method(method)
    except ValueError as error:
        raise bad_parameter(name, str(error)) from None
    return method, options


def parse_variants(value: Any, method: str | None = None, name: str = "variants") -> list[Variant]:
    """Variants from ``["default", "variant=paper", "kd_weight=1,variant=paper"]`` (options of ``method``),
    or, with ``method=None``, ``["ce", "kd", "ickd:variant=paper"]`` (``method[:options]``); a string holds
    entries separated by ``;``. Option names and values are checked by the method's configuration, except
    ``student_weights`` (``torchvision`` or a file, relative to the repository root), see :class:`Variant`."""
    variants = []
    for item in _items(name, value, ";"):
        if method is not None:
            variants.append(_parse_variant(name, method, item))
        else:
            variants.append(_parse_variant(name, *_method_entry(name, item)))
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise bad_parameter(name, f"lists a variant twice: {labels}")
    return variants


def parse_seeds(value: Any) -> list[int]:
    """Seeds: an integer, a list of integers >= 0, or a string ``"0,1,2"``."""
    if _is_int(value):
        value = [value]
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.replace(";", ",").split(",") if v.strip()]
        except ValueError:
            raise bad_parameter("seeds", f"must be integers >= 0, got {value!r}") from None
    if not isinstance(value, list | tuple) or not value:
        raise bad_parameter("seeds", f"must be a non-empty list of integers >= 0, got {value!r}")
    for seed in value:
        if not _is_int(seed) or seed < 0:
            raise bad_parameter("seeds", f"must be integers >= 0, got {seed!r} in {value!r}")
    if len(set(value)) != len(value):
        raise bad_parameter("seeds", f"lists a seed twice: {value!r}")
    return list(value)


# --- teachers -------------------------------------------------------------------------------------
def teacher_checkpoint(dataset: str, arch: str, teachers_dir: str | Path = TEACHERS_DIR) -> Path | None:
    """The checkpoint of teacher ``arch`` for ``dataset`` under ``teachers_dir``, or None.

    Looked up as ``<dir>/<dataset>/<arch>/model.pt`` (kdlib, e.g. the committed Fashion-MNIST teachers),
    ``<dir>/<dataset>/<arch>_vanilla/ckpt_epoch_240.pth`` (RepDistiller / mdistiller's ``cifar_teachers.tar``
    extracted into ``<dir>/<dataset>/``), then ``<dir>/<dataset>/<arch>.pth``.
    """
    root = repo_path(teachers_dir) / dataset
    for candidate in (root / arch / "model.pt", root / f"{arch}_vanilla" / "ckpt_epoch_240.pth",
                      root / f"{arch}.pth"):
        if candidate.is_file():
            return candidate
    return None


def _teacher_checkpoints(dataset: str, pairs: list[Pair], teachers_dir: Path,
                         required: bool) -> dict[str, Path]:
    """``{teacher: checkpoint}`` of the pairs' teachers found; a missing one is an error when ``required``."""
    ckpts: dict[str, Path] = {}
    for pair in pairs:
        ckpt = teacher_checkpoint(dataset, pair.teacher, teachers_dir)
        if ckpt is not None:
            ckpts[pair.teacher] = ckpt
        elif required:
            where = relative(teachers_dir / dataset / pair.teacher / "model.pt")
            raise bad_parameter("pairs", f"no checkpoint of teacher '{pair.teacher}' for {dataset} (looked "
                                f"for {where} and RepDistiller's <arch>_vanilla/ckpt_epoch_240.pth); train "
                                "it with notebooks/00_teachers.ipynb (-p train True) or set teachers_dir")
    return ckpts


# --- the whole set --------------------------------------------------------------------------------
def _check_variants(variants: Any, baselines: Any, method: str | None) -> tuple[list[Variant], list[Variant]]:
    if method is not None:
        get_method(method)
    variant_list = parse_variants(variants, method)
    baseline_list = parse_variants(baselines, None, "baselines")
    if not variant_list and not baseline_list:
        raise bad_parameter("variants", "nothing to run: give at least one variant")
    return variant_list, baseline_list


def _check_device(device: Any) -> str:
    if not isinstance(device, str) or not (device in DEVICES or device.startswith("cuda:")):
        raise bad_parameter("device", f"invalid device {device!r}; choose one of: {', '.join(DEVICES)}")
    try:
        resolve_device(device)
    except ValueError as error:
        raise bad_parameter("device", str(error)) from None
    return device


def _check_recipe_overrides(recipe: str, epochs: int | None, batch_size: int | None) -> None:
    """The recipe accepts the overrides."""
    overrides = {k: v for k, v in (("epochs", epochs), ("batch_size", batch_size)) if v is not None}
    try:
        get_recipe(recipe, **overrides)
    except ValueError as error:
        raise bad_parameter("recipe", str(error)) from None


def _check_folders(**folders: Any) -> dict[str, Path | None]:
    """The folder parameters as absolute paths (``results_dir`` and ``data_root`` may be None); ``out_dir``
    outside ``data/``, ``results_dir`` not inside ``out_dir``."""
    paths: dict[str, Path | None] = {}
    for name, value in folders.items():
        if value is None and name in ("results_dir", "data_root"):
            paths[name] = None
            continue
        if not isinstance(value, str | os.PathLike) or not str(value).strip():
            raise bad_parameter(name, f"must be a folder path, got {value!r}")
        paths[name] = repo_path(value)
    out = paths["out_dir"].resolve()
    if out == DATA_DIR.resolve() or DATA_DIR.resolve() in out.parents:
        raise bad_parameter("out_dir", f"'{relative(out)}' is inside data/: run folders hold checkpoints; "
                                       "put them under runs/ and pass results_dir to copy the records into "
                                       "data/results/")
    results = paths["results_dir"]
    if results is not None and results.resolve() != out and out in results.resolve().parents:
        raise bad_parameter("results_dir", "must not lie inside out_dir")
    return paths


def _check_train_options(options: Any) -> dict[str, Any]:
    """``train_options``: options of every run besides those the other parameters set (:data:`GRID_FIELDS`),
    by their :class:`~kdlib.config.TrainConfig` names, e.g. ``{"precision": "fp32", "tensorboard": true}``."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise bad_parameter("train_options", f"must be a dict of run options, got {options!r}")
    allowed = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in GRID_FIELDS]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise bad_parameter("train_options",
                            f"unknown option(s) {unknown}; choose from: {', '.join(allowed)}")
    try:
        for name, value in options.items():
            check_option(name, value)
        if options.get("tensorboard"):
            curves.check_available()
    except ValueError as error:
        raise bad_parameter("train_options", str(error)) from None
    return dict(options)


def _check_recipe_fields(overrides: Mapping[str, Any], recipe: str, dataset: str, epochs: int | None,
                         batch_size: int | None) -> None:
    """``train_options``' ``recipe_overrides``: what :func:`~kdlib.recipes.get_recipe` accepts (fields by
    name, each value of its type, the recipe's own rules) together with the ``epochs`` and ``batch_size``
    parameters, which the overrides may not set again, and an ``image_size`` that suits ``dataset``: what
    every run's :func:`~kdlib.config.plan` would refuse, refused before any run starts."""
    given = {k: v for k, v in (("epochs", epochs), ("batch_size", batch_size)) if v is not None}
    both = sorted(set(overrides) & set(given))
    if both:
        name = both[0]
        raise bad_parameter("train_options", f"recipe_overrides: {name} {overrides[name]!r} and the "
                                             f"parameter '{name}' ({given[name]}) both set {name}; "
                                             "set only one")
    try:
        get_dataset_spec(dataset).with_image_size(get_recipe(recipe, **overrides, **given).image_size)
    except ValueError as error:
        raise bad_parameter("train_options", f"recipe_overrides: {error}") from None


def _check_label(label: Any, results_dir: Path | None) -> str:
    if label is None:  # runs whose records stay in runs/ are smoke runs; the others feed the study
        label = SMOKE_LABEL if results_dir is None else f"study run (records in {relative(results_dir)})"
    if not isinstance(label, str) or not label.strip():
        raise bad_parameter("label", f"must be a non-empty string or None, got {label!r}")
    return label.strip()


def check_parameters(
    *,
    dataset: Any,
    pairs: Any,
    epochs: Any,
    recipe: Any,
    seeds: Any,
    variants: Any = ("default",),
    device: Any = "auto",
    subset: Any = None,
    out_dir: Any,
    method: str | None = None,
    baselines: Any = (),
    eval_subset: Any = None,
    results_dir: Any = None,
    teachers_dir: Any = TEACHERS_DIR,
    jobs: Any = 1,
    workers: Any = 0,
    threads: Any = None,
    batch_size: Any = None,
    data_root: Any = None,
    label: Any = None,
    train_options: Any = None,
    require_teachers: bool | None = None,
) -> Parameters:
    """Check every notebook parameter before anything is loaded or trained; return them normalised.

    ``variants`` are options of ``method`` (a method notebook) or ``method[:options]`` entries when ``method``
    is None; ``baselines`` are always ``method[:options]``. ``out_dir`` may not lie inside ``data/`` (run
    folders hold checkpoints; records reach ``data/results`` only through ``results_dir``). Every pair's
    teacher checkpoint is looked up (:func:`teacher_checkpoint`); it must exist when ``require_teachers`` is
    True, or (None, the default) when a variant or baseline needs a teacher.

    Raises:
        ValueError: naming the parameter, the bad value and what is allowed.
    """
    dataset = _choice("dataset", dataset, DATASETS)
    pair_list = parse_pairs(pairs)
    epochs = _optional_int("epochs", epochs, 1)
    recipe = _choice("recipe", recipe, RECIPES)
    seed_list = parse_seeds(seeds)
    variant_list, baseline_list = _check_variants(variants, baselines, method)
    device = _check_device(device)
    numbers = {"subset": _optional_int("subset", subset, 1),
               "eval_subset": _optional_int("eval_subset", eval_subset, 1),
               "batch_size": _optional_int("batch_size", batch_size, 1),
               "jobs": _int("jobs", jobs, 1), "workers": _int("workers", workers, 0),
               "threads": _optional_int("threads", threads, 1)}
    _check_recipe_overrides(recipe, epochs, numbers["batch_size"])
    folders = _check_folders(out_dir=out_dir, results_dir=results_dir, teachers_dir=teachers_dir,
                             data_root=data_root)
    label = _check_label(label, folders["results_dir"])
    options = _check_train_options(train_options)
    _check_recipe_fields(options.get("recipe_overrides", {}), recipe, dataset, epochs, numbers["batch_size"])
    if require_teachers is None:
        require_teachers = any(v.needs_teacher for v in [*variant_list, *baseline_list])
    ckpts = _teacher_checkpoints(dataset, pair_list, folders["teachers_dir"], require_teachers)
    return Parameters(dataset=dataset, pairs=pair_list, epochs=epochs, recipe=recipe, seeds=seed_list,
                      variants=variant_list, baselines=baseline_list, device=device, teacher_ckpts=ckpts,
                      label=label, train_options=options, **numbers, **folders)


# --- the notebooks' parameters --------------------------------------------------------------------
def check_notebooks(names: Sequence[str]) -> list[str]:
    """``names`` as a list when each is one of :data:`NOTEBOOKS`, else a ``ValueError`` naming the unknown
    ones and the notebooks."""
    unknown = [name for name in names if name not in NOTEBOOKS]
    if unknown:
        listed = ", ".join(f"'{name}'" for name in unknown)
        raise ValueError(f"unknown notebook {listed}; choose from: {', '.join(NOTEBOOKS)}")
    return list(names)


def parameter_defaults(notebook: str | Path) -> dict[str, Any]:
    """The names and default values of a notebook's cell tagged ``parameters`` (literals only); ``notebook``
    is a file or one of :data:`NOTEBOOKS`."""
    path = Path(notebook)
    if not path.suffix:
        path = NOTEBOOKS_DIR / f"{check_notebooks([str(notebook)])[0]}.ipynb"
    cells = [c for c in json.loads(path.read_text())["cells"]
             if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{relative(path)} must have exactly one cell tagged 'parameters', "
                         f"found {len(cells)}")
    source = cells[0]["source"]
    tree = ast.parse(source if isinstance(source, str) else "".join(source))
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


#: Names every IPython namespace holds besides the notebook's own.
_IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})
_PARAMETER_TYPES = (str, int, float, bool, list, tuple, dict, type(None))


def check_parameter_names(notebook: str, namespace: Mapping[str, Any]) -> None:
    """Stop a notebook run that was given a parameter its ``parameters`` cell does not declare.

    papermill only warns about ``-p NAME VALUE`` with an unknown ``NAME`` and runs the defaults; called with
    ``globals()`` at the top of a notebook, this raises :class:`ParameterError` naming the unknown name, the
    closest declared one and every declared parameter. Values papermill can inject (literals) are checked;
    modules, functions and IPython's own names are not parameters.
    """
    declared = list(parameter_defaults(notebook))
    unknown = sorted(name for name, value in namespace.items()
                     if not name.startswith("_") and name not in _IPYTHON_NAMES and name not in declared
                     and isinstance(value, _PARAMETER_TYPES))
    if unknown:
        close = {n: difflib.get_close_matches(n, declared, 1) for n in unknown}
        hints = [f"'{n}'" + "".join(f" (did you mean '{m}'?)" for m in close[n]) for n in unknown]
        raise ParameterError(f"unknown parameter {', '.join(hints)}; the parameters of {Path(notebook).stem} "
                             f"are: {', '.join(declared)}")


def check_notebook_parameters(notebook: str, params: Mapping[str, Any]) -> Parameters:
    """:func:`check_parameters` on a notebook's parameter dict (its method filled in)."""
    args = {k: v for k, v in params.items() if k not in NOTEBOOK_ONLY}
    if notebook == "00_teachers":
        args.setdefault("variants", [])
        args.setdefault("baselines", ["ce"])
        args["require_teachers"] = not params.get("train", False)
    if notebook == "06_head_to_head" and not params.get("train", False):
        args["require_teachers"] = False
    return check_parameters(method=NOTEBOOK_METHODS[notebook], **args)
