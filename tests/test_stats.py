"""The study's statistics (kdlib.stats), pinned against values statsmodels 0.15.0 computed once."""

from __future__ import annotations

import math

import pytest

from kdlib import stats

# statsmodels.stats.multitest.multipletests(P, alpha=0.05, method="holm")[1]
P = [0.01, 0.04, 0.03, 0.005, 0.20, 0.50]
HOLM = [0.05, 0.12, 0.12, 0.03, 0.4, 0.5]


def test_holm_matches_statsmodels_and_a_hand_check() -> None:
    assert stats.holm(P) == pytest.approx(HOLM, abs=1e-12)
    # by hand: sorted 0.005, 0.01, 0.03, 0.04, 0.2, 0.5 times 6..1 = 0.03, 0.05, 0.12, 0.12, 0.4, 0.5
    assert stats.holm([0.04, 0.01]) == pytest.approx([0.04, 0.02])
    assert stats.holm([0.9, 0.5]) == pytest.approx([1.0, 1.0])  # capped, and never below a smaller p's
    adjusted = stats.holm([0.01, math.nan, 0.02])  # an untested comparison is not counted
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.02)
    assert stats.holm([]) == []


# statsmodels.stats.power.TTestPower().solve_power(None, nobs=n, alpha=a, power=0.8) (an effect size: x sd)
@pytest.mark.parametrize(("n", "alpha", "effect"), [
    (10, 0.05 / 8, 1.434445729749674),
    (12, 0.05 / 8, 1.248307766660815),
    (10, 0.05, 0.9960019107624178),
    (3, 0.05, 3.264043552819638),
    (3, 0.05 / 7, 9.622418984579685 / 1.1108008063431285),  # scipy: NaN in the far tail
])
def test_detectable_difference_matches_statsmodels(n: int, alpha: float, effect: float) -> None:
    assert stats.detectable_difference(1.11, n, alpha) == pytest.approx(effect * 1.11, rel=1e-6)
    assert stats.power(effect * 1.11, 1.11, n, alpha) == pytest.approx(0.8, abs=1e-6)


def test_power_and_seeds_needed() -> None:
    assert stats.power(0.5, 1.0, 10) == pytest.approx(0.2931756065140767, rel=1e-6)  # TTestPower().power
    n = stats.seeds_needed(1.0, 1.0)
    assert stats.power(1.0, 1.0, n) >= 0.8 > stats.power(1.0, 1.0, n - 1)
    with pytest.raises(ValueError, match="need n >= 2"):
        stats.detectable_difference(1.0, 1)


def test_paired_test_is_scipys_one_sample_t() -> None:
    t, p = stats.paired_test([1.0, 2.0, 3.0])  # mean 2, sd 1, t = 2·√3
    assert t == pytest.approx(2 * math.sqrt(3)) and p == pytest.approx(0.07417990022744855, rel=1e-9)
    assert all(math.isnan(v) for v in stats.paired_test([1.0]))
    assert all(math.isnan(v) for v in stats.paired_test([0.5, 0.5]))


def test_p_values_print_as_readers_compare_them() -> None:
    printed = [stats.format_p(p) for p in (0.0004, 0.001, 0.0419, 0.62)]
    assert printed == ["< 0.001", "0.001", "0.042", "0.620"]
    assert stats.format_p(math.nan) == "" and stats.format_p(None) == ""
    assert stats.p_phrase(0.0004) == "Holm p < 0.001" and stats.p_phrase(0.0169) == "Holm p = 0.017"
    assert stats.p_phrase(0.2, name="p") == "p = 0.200"
