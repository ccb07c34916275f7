"""Consistency checks of the repository itself: packaging, CI, README and book wiring."""

import configparser
import csv
import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_names_the_same_packages_as_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pyproject = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda = {r for r in pip_section if not r.startswith("-e")}
    assert {_name(r) for r in conda} == {_name(r) for r in pyproject}
    # pins and ranges agree too (torch and torchvision must move together)
    assert {r.replace(" ", "") for r in conda} == {r.replace(" ", "") for r in pyproject}
    assert any(r.startswith("-e .") for r in pip_section), "environment.yml must install the project itself"


def test_torch_and_torchvision_are_pinned_together() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make book" in readme
    assert readme.index("make book") < readme.index("## "), "the two commands come first"
    assert re.search(r"^make test$", ci, re.M), ".ci/run must call `make test` exactly as the README says"
    assert "set -euo pipefail" in ci


def test_reported_results_keep_their_source() -> None:
    with open(ROOT / "data" / "reported" / "reported_results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) > 300
    columns = {"paper", "dataset", "teacher_id", "student_id", "method", "metric", "value", "source"}
    assert columns <= set(rows[0])
    assert all(row["source"].strip() for row in rows), "every reported number needs its source"
    for row in rows:  # a number first; some sources annotate it ("74.3 (final epoch)")
        assert re.match(r"^-?\d+(\.\d+)?", row["value"]), row


def test_committed_records_are_finished_runs_of_clean_commits() -> None:
    """A committed record is a finished run (run_grid copies only finished runs to data/results/), made from a
    commit's code: its provenance names code that exists, unmodified. Only the records git tracks: a profile's
    own git-ignored records (``smoke``) may come from any working tree."""
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--", "data/results/**/record.json"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert tracked
    for path in (ROOT / name for name in tracked):
        record = json.loads(path.read_text())
        assert record["status"] in ("completed", "diverged"), path
        assert record["git_commit"] and record["git_dirty"] is False, path


def test_measurement_tables_append_under_one_header_with_unix_line_ends(tmp_path: Path) -> None:
    from kdlib.files import append_csv

    table = tmp_path / "bench" / "t.csv"
    append_csv(table, [{"a": 1, "b": "x, y"}])
    append_csv(table, [{"a": 2, "b": "z"}, {"a": 3}])
    assert table.read_bytes() == b'a,b\n1,"x, y"\n2,z\n3,\n'
    with pytest.raises(ValueError, match="t.csv has other columns"):
        append_csv(table, [{"a": 4}], columns=["a"])
    for committed in sorted((ROOT / "bench").rglob("*.csv")):  # every committed table, as its writer writes
        assert b"\r" not in committed.read_bytes(), committed


def test_the_repository_root_is_named_once() -> None:
    """kdlib.paths owns the repository's paths; no other module derives the root from its own file."""
    from kdlib import paths

    assert paths.REPO == ROOT
    derived = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "kdlib").rglob("*.py")
                     if "__file__" in p.read_text())
    assert "kdlib/paths.py" in derived
    assert derived == ["kdlib/paths.py"], derived


def test_gitignore_covers_build_outputs() -> None:
    ignored = (ROOT / ".gitignore").read_text().split()
    for path in (".venv", "book/_build/", "book/notebooks/", "runs/", "__pycache__/"):
        assert path in ignored  # ".venv", not ".venv/": a link to a shared environment is ignored too


def test_nbval_sanitizer_is_valid() -> None:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "tests" / "nbval_sanitize.cfg")
    for section in parser.sections():
        re.compile(parser[section]["regex"])


def _toc_files(entry: dict | list) -> list[str]:
    found = []
    if isinstance(entry, dict):
        found += [entry[k] for k in ("root", "file") if k in entry]
        for value in entry.values():
            if isinstance(value, dict | list):
                found += _toc_files(value)
    elif isinstance(entry, list):
        for item in entry:
            found += _toc_files(item)
    return found


def test_book_toc_files_exist() -> None:
    toc = _toc_files(yaml.safe_load((ROOT / "book" / "_toc.yml").read_text()))
    assert toc, "the book needs at least its landing page"
    for entry in toc:
        if entry.startswith("notebooks/"):
            assert (ROOT / entry).with_suffix(".ipynb").exists(), entry
        else:
            assert any((ROOT / "book" / entry).with_suffix(s).exists() for s in (".md", ".ipynb")), entry


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_has_one_parameters_cell_and_is_in_the_book(path: Path) -> None:
    nb = json.loads(path.read_text())
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
    toc = _toc_files(yaml.safe_load((ROOT / "book" / "_toc.yml").read_text()))
    assert f"notebooks/{path.stem}" in toc
