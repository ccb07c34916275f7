"""The committed notebooks, read (never executed here: nbval executes them in ``make nbval``).

- each has exactly one ``parameters`` cell with the study's parameter names, whose values pass
  ``kdlib.study.check_notebook_parameters`` (no training involved);
- the stored outputs are those of the default run: every code cell executed in order, no errors, no
  papermill-injected parameters;
- the machine-dependent values, which nbval does not compare (cells tagged ``nbval-ignore-output``), lie in
  sane ranges: accuracies in [0, 100], losses finite, every epoch recorded, the method's default variant and
  the vanilla student trained (read from the hidden ``run-metrics`` cell, JSON of ``kdlib.study.metrics``);
- the notebooks stay thin: they call kdlib, keep the inline backend and progress bars off.
"""

from __future__ import annotations

import ast
import json
import math
from typing import Any

import pytest

from kdlib import study

NOTEBOOKS = {name: study.NOTEBOOKS_DIR / f"{name}.ipynb" for name in study.NOTEBOOKS}
METHOD_NOTEBOOKS = [n for n, m in study.NOTEBOOK_METHODS.items() if m]
#: The names the issue asks for in every notebook's parameters cell.
REQUIRED = ("dataset", "pairs", "epochs", "recipe", "seeds", "variants", "device", "subset", "out_dir")


def load(name: str) -> dict[str, Any]:
    return json.loads(NOTEBOOKS[name].read_text())


def source(cell: dict[str, Any]) -> str:
    text = cell["source"]
    return text if isinstance(text, str) else "".join(text)


def tags(cell: dict[str, Any]) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def outputs_text(cell: dict[str, Any]) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append(out["text"] if isinstance(out["text"], str) else "".join(out["text"]))
        elif "data" in out and "text/plain" in out["data"]:
            text = out["data"]["text/plain"]
            parts.append(text if isinstance(text, str) else "".join(text))
    return "".join(parts)


def run_metrics(name: str) -> list[dict[str, Any]]:
    cells = [c for c in load(name)["cells"] if "run-metrics" in tags(c)]
    assert len(cells) == 1, f"{name}: one cell tagged run-metrics"
    return json.loads(outputs_text(cells[0]))


def test_all_notebooks_exist() -> None:
    found = sorted(p.stem for p in study.NOTEBOOKS_DIR.glob("*.ipynb"))
    assert found == sorted(study.NOTEBOOKS)


@pytest.mark.parametrize("name", study.NOTEBOOKS)
def test_parameters_cell(name: str) -> None:
    cells = [c for c in load(name)["cells"] if "parameters" in tags(c)]
    assert len(cells) == 1
    names = [n.targets[0].id for n in ast.parse(source(cells[0])).body if isinstance(n, ast.Assign)]
    assert set(REQUIRED) <= set(names), set(REQUIRED) - set(names)
    defaults = study.parameter_defaults(name)
    assert defaults["device"] == "cpu" and defaults["threads"] == 1
    assert str(defaults["out_dir"]).startswith("runs/")
    if "results_dir" in defaults:
        assert defaults["results_dir"] is None, "the default run's records stay in runs/"
    if name == "00_teachers":
        assert defaults["train"] is False, "00_teachers loads the committed teachers by default"
    if name == "06_head_to_head":
        assert defaults["train"] is False, "06_head_to_head renders the committed records by default"
    teacher = study.parse_pairs(defaults["pairs"])[0].teacher
    if study.teacher_checkpoint(defaults["dataset"], teacher) is None:
        pytest.skip(f"the teacher data/teachers/{defaults['dataset']}/{teacher}/model.pt is not committed")
    params = study.check_notebook_parameters(name, defaults)
    assert params.label == study.SMOKE_LABEL


@pytest.mark.parametrize("name", study.NOTEBOOKS)
def test_stored_outputs_are_a_clean_default_run(name: str) -> None:
    nb = load(name)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert not any("injected-parameters" in tags(c) for c in code), "committed with default parameters only"
    counts = [c["execution_count"] for c in code]
    assert all(isinstance(n, int) for n in counts), f"{name}: not every cell executed"
    assert counts == sorted(counts), f"{name}: cells executed out of order"
    for cell in code:
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"{name}: {out.get('ename')}: {out.get('evalue')}"
            if out["output_type"] == "stream":
                assert out["name"] == "stdout" or not (out["text"] if isinstance(out["text"], str)
                                                       else "".join(out["text"])).strip(), \
                    f"{name}: unexpected stderr output"
    text = json.dumps(nb)
    for forbidden in ("matplotlib.use(", "progress=True", "%matplotlib"):
        assert forbidden not in text, f"{name} uses {forbidden}"
    assert "study.setup(threads=threads" in text, "thread count fixed and seeds set"


@pytest.mark.parametrize("name", METHOD_NOTEBOOKS)
def test_method_notebook_run_values_are_sane(name: str) -> None:
    method = study.NOTEBOOK_METHODS[name]
    defaults = study.parameter_defaults(name)
    rows = run_metrics(name)
    labels = [r["run"] for r in rows]
    expected = [v.label for v in study.parse_variants(defaults["baselines"], None, "baselines")]
    expected += [v.label for v in study.parse_variants(defaults["variants"], method)]
    assert labels == expected, "the runs of the default parameters, in order"
    done = {r["run"] for r in rows if r["status"] in ("trained", "skipped")}
    assert f"{method}/default" in done and "ce/default" in done
    for r in rows:
        assert r["status"] in ("trained", "skipped", "diverged"), r  # never "failed": a crash
        if r["status"] == "diverged":
            assert "non-finite" in r["message"], r
            continue
        assert r["epochs"] == defaults["epochs"] == r["history_epochs"], r
        for key in ("top1_last", "top1_best", "top5_last"):
            assert 0.0 <= r[key] <= 100.0, (key, r)
        assert r["top1_best"] >= r["top1_last"] and r["top5_last"] >= r["top1_last"], r
        if r["run"] != "ce/default":
            assert 0.0 <= r["teacher_top1"] <= 100.0, r
        assert r["losses_last"] and all(math.isfinite(v) for v in r["losses_last"].values()), r
        assert 0 < r["wall_time_s"] < 600, r


def test_teachers_notebook_values_are_sane() -> None:
    rows = run_metrics("00_teachers")
    defaults = study.parameter_defaults("00_teachers")
    teachers = {study.parse_pairs(defaults["pairs"])[0].teacher}
    assert {r["teacher"] for r in rows} == teachers
    for r in rows:
        assert r["checkpoint"].startswith("data/teachers/"), "the committed teacher, not a temporary one"
        assert r["test images"] == defaults["eval_subset"]
        assert 0.0 <= r["top-1"] <= r["top-5"] <= 100.0
        assert r["top-1"] > 50, "a trained Fashion-MNIST teacher"
        assert 0 < r["size (MB)"] < 10, "committed checkpoints stay small"


@pytest.mark.parametrize("name", METHOD_NOTEBOOKS)
def test_method_notebook_shows_its_run_and_figures(name: str) -> None:
    nb = load(name)
    text = "".join(outputs_text(c) for c in nb["cells"] if c["cell_type"] == "code")
    assert f"run: {study.SMOKE_LABEL}" in text
    images = sum("image/png" in out.get("data", {}) for c in nb["cells"] if c["cell_type"] == "code"
                 for out in c.get("outputs", []))
    assert images >= 3, "training curves, loss terms and the method's own figure"
    markdown = "".join(source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "$$" in markdown, "the method's equation"
    assert "smoke (CI default)" in markdown


@pytest.mark.parametrize("name", study.NOTEBOOKS)
def test_machine_dependent_cells_are_ignored_by_nbval(name: str) -> None:
    """Cells that train, evaluate or plot trained models are tagged ``nbval-ignore-output``."""
    for cell in load(name)["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = source(cell).replace("plots.setup(", "")
        machine = any(call in src for call in ("run_grid", "evaluate_teachers", "plots.", "study.metrics",
                                               "reported_vs_measured", "report.measured", "report.teachers"))
        if machine:
            assert "nbval-ignore-output" in tags(cell), src[:80]


def test_notebooks_do_not_define_functions_or_classes() -> None:
    """Notebooks stay thin: what they compute is kdlib's (kdlib.study, kdlib.plots, kdlib.report)."""
    for name in study.NOTEBOOKS:
        for cell in load(name)["cells"]:
            if cell["cell_type"] == "code":
                tree = ast.parse(source(cell))
                kinds = ast.FunctionDef | ast.ClassDef | ast.Lambda
                defined = [n for n in ast.walk(tree) if isinstance(n, kinds)]
                assert not defined, f"{name}: defines {[type(n).__name__ for n in defined]}"


def test_committed_teachers_and_their_records() -> None:
    """Every notebook's default teacher is committed, small, with the completed record of its training."""
    teachers = {(d["dataset"], study.parse_pairs(d["pairs"])[0].teacher)
                for d in map(study.parameter_defaults, study.NOTEBOOKS)}
    for dataset, arch in sorted(teachers):
        ckpt = study.TEACHERS_DIR / dataset / arch / "model.pt"
        if not ckpt.exists():
            pytest.skip(f"teacher {ckpt} not committed yet")
        record = json.loads((ckpt.parent / "record.json").read_text())
        assert record["status"] == "completed" and record["method"] == "ce", ckpt
        assert record["student"] == arch and record["dataset"] == dataset and record["subset"] is None, \
            "trained on the whole training set"
        assert 80 <= record["top1_last"] <= 100
        assert ckpt.stat().st_size < 8 * 2**20
    files = sorted(p.name for p in study.TEACHERS_DIR.rglob("*") if p.is_file())
    assert set(files) <= {"model.pt", "record.json"}, "only model.pt and record.json are committed"


def test_no_checkpoints_in_results() -> None:
    assert not [p for p in study.RESULTS_DIR.rglob("*") if p.is_file() and p.name != "record.json"
                and p.suffix in (".pt", ".pth")], "data/results holds records only"


def test_head_to_head_renders_every_committed_record() -> None:
    """The book's results page is 06's stored output: it must show the records committed now (after adding
    records, ``python -m kdlib.study refresh`` re-executes the notebooks)."""
    from kdlib import report

    defaults = study.parameter_defaults("06_head_to_head")
    count = len(report.study_records(study.repo_path(defaults["records_dir"])))
    cells = [c for c in load("06_head_to_head")["cells"] if "rendering the" in outputs_text(c)]
    assert len(cells) == 1
    assert f"rendering the {count} committed records" in outputs_text(cells[0]), "refresh the notebooks"


@pytest.mark.parametrize("name", study.NOTEBOOKS)
def test_notebook_is_written_for_readers(name: str) -> None:
    """A misspelt ``-p NAME`` stops the run before any training; code cells that only compute are folded in
    the book; tables are shown through ``study.show`` (no index, 2 decimals, no cut cells); the notebook's
    title differs from its chapter's."""
    cells = load(name)["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    text = "".join(source(c) for c in code)
    assert f'study.check_parameter_names("{name}", globals())' in text
    first_check = next(i for i, c in enumerate(code) if "check_parameter_names" in source(c))
    assert not any("run_grid" in source(c) for c in code[:first_check + 1]), "checked before any training"
    for cell in code:
        if "parameters" not in tags(cell):
            assert {"hide-input", "remove-input", "remove-cell"} & set(tags(cell)), source(cell)[:80]
    assert "max_colwidth" not in text, "tables go through study.show, which cuts no cell"
    title = source(cells[0]).splitlines()[0]
    assert title.endswith(": the notebook") or name in ("00_teachers", "06_head_to_head"), title


@pytest.mark.parametrize("name", METHOD_NOTEBOOKS)
def test_a_method_notebooks_smoke_outputs_are_marked_and_folded(name: str) -> None:
    """A method notebook's committed outputs are a smoke run's: a box says so before the first of them, names
    the chapter where the measured results are, and every output of this execution's runs is folded."""
    cells = load(name)["cells"]
    box = next(i for i, c in enumerate(cells) if "A smoke run, not a result" in source(c))
    assert cells[box]["cell_type"] == "markdown" and "../methods/" in source(cells[box])
    runs = next(i for i, c in enumerate(cells) if "run_grid" in source(c))
    assert box < runs
    shown = [c for c in cells[runs:] if c["cell_type"] == "code" and c.get("outputs")
             and not {"hide-output", "remove-cell", "remove-output"} & set(tags(c))]
    assert not shown, [source(c)[:60] for c in shown]
