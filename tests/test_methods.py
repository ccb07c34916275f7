"""The table of methods (kdlib.methods) and the layering of the method modules.

- the imports go one way (kdlib.methods → kdlib.losses.<method> → kdlib.distill), all at module level: each
  module imports cleanly first, in a fresh interpreter;
- the methods need only torch and numpy;
- each channel method's distiller computes what its figure shows (kdlib.plots only draws).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlib import plots
from kdlib.methods import CHANNEL_METHODS, METHODS, build_distiller
from kdlib.models import create_model

PACKAGE = Path(__file__).resolve().parents[1] / "kdlib"
METHOD_MODULES = sorted({cls.__module__ for cls in METHODS.values()})


def fresh(code: str) -> str:
    """Run ``code`` in a new interpreter (this checkout first on the path); its stdout."""
    path = str(PACKAGE.parent)
    done = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {path!r}); {code}"],
                          capture_output=True, text=True, check=True)
    return done.stdout


def test_distill_imports_no_method() -> None:
    """The base classes come first: importing kdlib.distill imports no method module and not the table."""
    loaded = fresh("import sys, kdlib.distill; print(' '.join(sorted(sys.modules)))").split()
    assert not [m for m in loaded if m in METHOD_MODULES or m == "kdlib.methods"], loaded


@pytest.mark.parametrize("module", ["kdlib.methods", *METHOD_MODULES, "kdlib.plots"])
def test_each_module_imports_first(module: str) -> None:
    """No import cycle: any of them can be the first kdlib module imported."""
    out = fresh(f"import {module}; import kdlib.methods as m; print(','.join(m.METHODS))")
    assert out.strip() == ",".join(METHODS)


def test_methods_need_only_torch_and_numpy() -> None:
    """The table and every method module import without pandas, matplotlib or tqdm (as on a GPU machine
    with only torch, torchvision and numpy, where bench/bench.py runs)."""
    blocked = ("pandas", "matplotlib", "seaborn", "tqdm")
    out = fresh(f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); import kdlib.methods as m; "
                "print(len(m.METHODS))")
    assert out.strip() == str(len(METHODS))


@pytest.mark.parametrize("path", ["distill.py", "methods.py", "plots.py", *sorted(
    p.name for p in (PACKAGE / "losses").glob("*.py"))])
def test_imports_at_module_level_only(path: str) -> None:
    """No function-level import holds a cycle together (or hides one)."""
    file = PACKAGE / path if (PACKAGE / path).exists() else PACKAGE / "losses" / path
    tree = ast.parse(file.read_text())
    inner = [f"{node.name}:{sub.lineno}" for node in ast.walk(tree)
             if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
             for sub in ast.walk(node) if isinstance(sub, ast.Import | ast.ImportFrom)]
    assert not inner, f"{path}: imports inside functions {inner}"


def test_losses_package_has_no_import_order_semantics() -> None:
    """kdlib/losses/__init__.py is a docstring: the table, not an import order, lists the methods."""
    tree = ast.parse((PACKAGE / "losses" / "__init__.py").read_text())
    assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr)


def test_plots_only_draw() -> None:
    """The methods' quantities are computed by the distillers, not re-implemented in kdlib.plots."""
    assert not [name for name in vars(plots) if name.endswith("_data")]
    tree = ast.parse((PACKAGE / "plots.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert not {m for m in imported if m.startswith(("kdlib.losses", "torch"))}, imported


# --------------------------------------------------------------------------------------------- figure data
@pytest.fixture(scope="module")
def trio() -> tuple[torch.Tensor, torch.nn.Module, dict[str, torch.nn.Module]]:
    """A batch, a vanilla student and each channel method's (untrained) distiller, resnet20 → resnet8."""
    torch.manual_seed(0)
    x = torch.randn(6, 3, 32, 32)
    vanilla = create_model("resnet8").eval()
    distillers = {m: build_distiller(m, create_model("resnet8"), create_model("resnet20")).eval()
                  for m in CHANNEL_METHODS}
    return x, vanilla, distillers


def test_figure_data_of_each_channel_method(trio) -> None:
    x, vanilla, d = trio
    ickd = d["ickd"].correlation_data(x, vanilla)
    assert {k: v.shape for k, v in ickd.items()} == {
        "teacher": (64, 64), "ICKD student e(f_s)": (64, 64), "vanilla student": (64, 64)}
    ccs = d["ccs"].correlation_data(x, vanilla)
    assert set(ccs) == {"intra", "inter"}
    matrices = [m for part in ccs.values() for m in part.values()]
    assert len(matrices) == 6 and all(m.shape == (64, 64) and np.abs(m).max() <= 1 + 1e-6 for m in matrices)
    cd = d["cd"].attention_data(x, vanilla)
    assert sorted({row["stage"] for row in cd}) == [1, 2, 3]
    assert {row["model"] for row in cd} == {"teacher", "CD student (connector)", "vanilla student"}
    cwt = d["cwt"].transform_data(x)
    assert cwt["W1"].shape == (64, 64) and cwt["W2"].shape == (64, 64) and len(cwt["corr_transformed"]) == 64
    assert np.abs(cwt["corr_transformed"]).max() <= 1 + 1e-6 and cwt["loss"] > 0
    iekd = d["iekd"].similarity_data(x)
    assert {row["part"] for row in iekd} == {"inheritance", "exploration"} and len(iekd) == 2 * len(x)
    assert all(-1 - 1e-6 <= row["cosine"] <= 1 + 1e-6 for row in iekd)


def test_figure_data_is_what_the_loss_compares(trio) -> None:
    """The figures use the distiller's own taps and projectors: the CWT figure's ``loss`` is the method's
    unweighted term, as forward computes it."""
    x, _, d = trio
    cwt = d["cwt"]
    _, losses = cwt(x, torch.zeros(len(x), dtype=torch.long))
    unweighted = losses["cwt"].item() / cwt.config.cwt_weight
    assert cwt.transform_data(x)["loss"] == pytest.approx(unweighted, rel=1e-5)


def test_figure_data_leaves_modes_alone(trio) -> None:
    """The figure data puts the models in eval mode for their forward and restores their modes."""
    x, vanilla, d = trio
    ickd = d["ickd"]
    ickd.train()
    vanilla.train()
    ickd.correlation_data(x, vanilla)
    assert ickd.student.training and vanilla.training and not ickd.teacher.training
    ickd.eval()
    vanilla.eval()
