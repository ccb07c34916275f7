"""bf16 against fp32 (bench/precision.py): what it trains, and how the book reads its summary."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from kdlib import report
from kdlib.study import staged

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def precision():
    spec = importlib.util.spec_from_file_location("bench_precision", REPO / "bench" / "precision.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_precision"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_precision"]


def test_each_seed_is_trained_in_both_precisions_as_study_v2_trained_it(precision) -> None:
    runs = precision.planned()
    assert len(runs) == len(precision.METHODS) * len(precision.SEEDS) * 2
    final = staged.load_staged("proxy_v2").results_dir / "final"
    for fp32, bf16 in zip(runs[::2], runs[1::2], strict=True):
        assert (fp32.config.precision, bf16.config.precision) == ("fp32", "bf16")
        # the pair differs in its precision and its folder only
        assert dataclasses.replace(bf16.config, precision="fp32", out=fp32.config.out) == fp32.config
        assert fp32.config.fast and fp32.config.seed in precision.SEEDS
        # the fp32 run is study v2's final run, the same configuration as its committed record
        committed = json.loads((final / fp32.key.removeprefix("fp32/final/") / "record.json").read_text())
        assert committed["config_id"] == fp32.config_id != bf16.config_id


def test_the_book_table_says_what_each_interval_shows(tmp_path: Path) -> None:
    csv = tmp_path / "precision.csv"
    xeon = "Intel(R) Xeon(R) Processor"
    csv.write_text(
        "comparison,method,seeds,a_mean,b_mean,mean_difference,ci_low,ci_high,p,a_cpu,b_cpu\n"
        f"bf16 - fp32,kd,5,80.1,80.6,-0.5,-0.9,-0.1,0.0004,{xeon},{xeon}\n"
        f"bf16 - fp32,cd,5,84.7,84.6,0.1,-0.3,0.5,0.42,{xeon},{xeon}\n"
        f"fp32 - fp32,kd,5,80.6,80.8,-0.2,-0.6,0.2,0.3,{xeon},AMD EPYC\n")
    table = report.precision(csv)
    assert table["verdict"].tolist() == ["lower", "no difference detected", "no difference detected"]
    assert table["p"].tolist() == ["< 0.001", "0.420", "0.300"]
    assert table["difference [95% CI]"][0] == "-0.50 [-0.90, -0.10]"
    assert table["runs compared"].tolist() == ["bf16 − fp32 on Intel Xeon", "bf16 − fp32 on Intel Xeon",
                                               "fp32 on Intel Xeon − fp32 on AMD EPYC"]
    assert report.precision(tmp_path / "none.csv").empty
