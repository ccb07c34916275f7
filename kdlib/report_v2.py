"""What the book says of the second proxy study beyond its tables (``book/study_v2.md``, the landing page; its
protocol is ``book/protocol_v2.md``): its power table, answer, headline, forest plot and claims table. Its
tables (teacher, tuning, final runs, comparisons, cost) come from :mod:`kdlib.staged_report`, as every staged
study's do.

Its records are read by stage (``tuning``, ``final``) from the folder its staged profile names, and nothing is
compared or answered until every final run has its record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from kdlib import comparison, plots, report, results, staged_report, stats
from kdlib.methods import CHANNEL_METHODS, options_in_words
from kdlib.paths import PROFILES_DIR, REPORTED_CSV, RESULTS_DIR
from kdlib.study.staged import chosen_weights, load_staged

#: The second proxy study's staged profile.
PROFILE = "proxy_v2"


def power_table(records: pd.DataFrame | None = None, profile: str | Path = PROFILES_DIR / "proxy_v2.json"
                ) -> pd.DataFrame:
    """The second proxy study's power (:func:`kdlib.comparison.power_statement`), from the first study's
    committed records (``data/results/proxy``) and the seeds and configurations ``profile`` fixes: the
    smallest true difference its comparisons with KD detect with 80% power, Holm-corrected and not."""
    records = report.study_records(RESULTS_DIR / "proxy") if records is None else records
    final = json.loads(Path(profile).read_text())["stages"]["final"]
    family = len(final["configurations"]) - 1
    rows = []
    for seeds in (3, len(final["seeds"])):
        p = comparison.power_statement(records, seeds, family, final["alpha"])
        rows.append({"paired seeds": seeds, "comparisons with KD": family,
                     "SD of paired differences (v1, pooled)": f"{p['sd']:.2f} ({p['df']} df)",
                     "detectable with 80% power, Holm": f"{p['detectable']:.2f}",
                     "same, uncorrected": f"{p['detectable_uncorrected']:.2f}"})
    return pd.DataFrame(rows)


def stage_records(stage: str) -> pd.DataFrame:
    """The completed and diverged records of one stage (``tuning``, ``final``) of the second proxy study."""
    return report.study_records(load_staged(PROFILE).results_dir / stage)


def _progress(records: pd.DataFrame, stage: str) -> tuple[int, int]:
    """(records in place, runs the protocol plans) of a stage."""
    s = load_staged(PROFILE)
    if stage == "tuning":
        planned = len(s.tuning["methods"]) * len(s.tuning["multipliers"]) * len(s.tuning["seeds"])
    else:
        planned = len(s.final["configurations"]) * len(s.final["seeds"])
    return len(records), planned


def answer(records: pd.DataFrame | None = None) -> str:
    """The second proxy study's answer in words (:func:`kdlib.comparison.answer`) once every final run has its
    record, with the smallest difference its realised noise lets it detect; until then, where it stands."""
    final = load_staged(PROFILE).final
    records = stage_records("final") if records is None else records
    done, planned = _progress(records, "final")
    tuned, tuning = _progress(stage_records("tuning"), "tuning")
    if done < planned:
        return ("Version 2 asks which channel methods beat KD, and the plain student, beyond the corrected "
                f"noise. It is under way: {tuned} of its {tuning} tuning runs and {done} of its {planned} "
                "final runs are recorded. Its answer is written here once every final run is, never from "
                "some of them.")
    detectable = comparison.power_statement(records, len(final["seeds"]), len(final["configurations"]) - 1,
                                            final["alpha"])["detectable"]
    return comparison.answer(records, final["baselines"], final["alpha"], detectable=detectable,
                             label=configuration_label, intervals=True)


#: Where each channel method's official code is, and at which commit (empty where none was released).
OFFICIAL_CODE_CSV = REPORTED_CSV.parent / "official_code.csv"
#: The names readers know methods by, where it is not the method's name in capitals.
DISPLAY = {"ce": "ce (student alone)", "iekd": "IE-KD"}


def display_name(method: str) -> str:
    return DISPLAY.get(method, method.upper())


def configuration_label(method: str, variant: str) -> str:
    """A configuration as readers name it, e.g. ``CD (cd_weight 24)`` for ``cd``/``cd_weight=24.0``."""
    if variant == "default":
        return display_name(method) + ("" if method == "ce" else " (default weights)")
    return f"{display_name(method)} ({options_in_words(variant)})"


def forest_data(records: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every final configuration minus each baseline of the protocol (KD, ce): ``label``
    (:func:`configuration_label`), ``baseline``, ``n``, ``mean``, ``lo``, ``hi`` (95% interval), ``p_holm``
    and ``significant`` (Holm's p at most the protocol's alpha); empty until every final run is recorded."""
    final = load_staged(PROFILE).final
    records = stage_records("final") if records is None else records
    done, planned = _progress(records, "final")
    if done < planned:
        return pd.DataFrame()
    frames = []
    for baseline in final["baselines"]:
        table = comparison.holm_comparisons(records, baseline, final["alpha"])
        frames.append(table.assign(baseline=baseline, significant=table["p_holm"] <= final["alpha"],
                                   label=[configuration_label(m, v) for m, v in
                                          zip(table["method"], table["variant"], strict=True)]))
    return pd.concat(frames, ignore_index=True)


def forest(records: pd.DataFrame | None = None) -> list[Figure]:
    """:func:`forest_data` drawn (:func:`kdlib.plots.forest`): one panel per baseline."""
    data = forest_data(records)
    if data.empty:
        return []
    names = {b: display_name(b).split(" (")[0] for b in data["baseline"].unique()}
    return [plots.forest(data.assign(baseline=data["baseline"].map(names)),
                         xlabel="test top-1 difference (points, last epoch)")]


def forest_text(records: pd.DataFrame | None = None) -> dict[str, str]:
    """The caption and the alt text of :func:`forest`, from the same numbers."""
    data = forest_data(records)
    if data.empty:
        return {"caption": "", "alt": ""}
    final = load_staged(PROFILE).final
    n = int(data["n"].min())
    kd = data[data["baseline"] == "kd"]
    above = kd[kd["significant"] & (kd["mean"] > 0)]["label"].tolist()
    takeaway = (f"only {' and '.join(above)} beat KD beyond the corrected noise" if above else
                "no configuration beats KD beyond the corrected noise")
    caption = (f"Version 2's final comparison: each configuration at its tuned weight minus KD (left) and "
               f"minus ce, the student trained alone (right), on the Fashion-MNIST test set; mean over {n} "
               f"paired seeds with its 95% Student-t interval (uncorrected); a filled marker is significant "
               f"after Holm's correction over each panel's {len(kd)} comparisons (α = {final['alpha']:g}). "
               f"At this scale, {takeaway}.")
    rows = "; ".join(f"{r.label} {r.mean:+.2f} [{r.lo:+.2f}, {r.hi:+.2f}]" for r in kd.itertuples())
    alt = (f"Forest plot of test top-1 differences with 95% intervals, two panels. Minus KD: {rows}. "
           f"{takeaway[0].upper()}{takeaway[1:]}.")
    return {"caption": caption, "alt": alt}


def grid_ends(tuning: pd.DataFrame | None = None) -> pd.DataFrame:
    """The tuned methods whose chosen weight is the smallest or the largest multiple their tuning tried
    (:func:`kdlib.study.staged.chosen_weights`): ``method``, ``multiplier``, ``end`` (True at an end), the
    multiples ``tried`` and their mean validation top-1 (``scores``, multiple to mean or None)."""
    chosen = chosen_weights(load_staged(PROFILE), stage_records("tuning") if tuning is None else tuning)
    tried = [sorted(scores) for scores in chosen["scores"]]
    ends = [m in (t[0], t[-1]) for m, t in zip(chosen["multiplier"], tried, strict=True)]
    return pd.DataFrame({"method": chosen["method"], "multiplier": chosen["multiplier"], "tried": tried,
                         "overrides": chosen["overrides"], "end": ends,
                         "scores": chosen["scores"]})


def _interval(row: pd.Series) -> str:
    return f"{row['mean']:+.2f} [{row['lo']:+.2f}, {row['hi']:+.2f}]"


def headline(records: pd.DataFrame | None = None, tuning: pd.DataFrame | None = None) -> str:
    """Version 2's answer in plain words, with its uncertainty and the conditions it holds under (teachers,
    training subsets and pairs counted from the records), and the tuned weights at an end of their grid."""
    records = stage_records("final") if records is None else records
    data = forest_data(records)
    if data.empty:
        return answer(records)
    lead = staged_report.beats(data[data["baseline"] == "kd"], "KD", short=display_name)
    conditions = staged_report.conditions(records)
    ends = grid_ends(tuning)
    at_end = ends[ends["end"]]
    grid = "/".join(f"×{m:g}" for m in ends["tried"].iloc[0]).replace("×0.25", "×¼")
    caveat = (f"{len(at_end)} of the {len(ends)} tuned weights sit at an end of the {grid} grid "
              f"({', '.join(display_name(m) for m in at_end['method'])}), so those methods may do better, or "
              "worse, at a weight this study did not try.") if len(at_end) else ""
    return f"{lead}\n\n{conditions} {caveat}".strip()


def landing(v3: str = "proxy_v3") -> str:
    """The landing page's answer in plain words: version 3's (:func:`kdlib.staged_report.headline`) once every
    one of its final runs is recorded, version 2's (:func:`headline`) until then."""
    return staged_report.headline(v3) if staged_report.complete(v3) else headline()


def _reported_claim(method: str, reported: pd.DataFrame) -> str:
    """The paper's gain over KD on the first CIFAR-100 pair its table lists (top-1 points), with its source;
    else which datasets it reports."""
    own = reported[(reported["method_id"] == method)
                   & ~reported["paper"].str.contains("3rd-party|reproduction|early", case=False)]
    cifar = own[(own["dataset"] == "CIFAR-100") & own["metric"].str.startswith("top1")]
    if not len(cifar):
        label = display_name(method)
        papers = reported[reported["paper"].str.startswith(label) | (reported["method_id"] == method)]
        datasets = sorted(set(papers["dataset"]) - {"(ablation)"})
        return (f"none on CIFAR-100 against KD; it reports {', '.join(datasets)}" if datasets else
                "no reported number")
    first = cifar.iloc[0]
    rows = cifar[(cifar["teacher_id"] == first["teacher_id"]) & (cifar["student_id"] == first["student_id"])]
    row = rows[rows["variant"] == "default"].iloc[0] if (rows["variant"] == "default").any() else first
    kd = reported[(reported["paper"] == row["paper"]) & (reported["dataset"] == row["dataset"])
                  & (reported["method_id"] == "kd") & (reported["teacher_id"] == row["teacher_id"])
                  & (reported["student_id"] == row["student_id"]) & (reported["metric"] == row["metric"])]
    where = f"on {row['teacher']} → {row['student']}"
    if not len(kd):
        return f"no KD row {where}"
    gain, k = row["reported_acc"] - kd.iloc[0]["reported_acc"], kd.iloc[0]["reported_acc"]
    error = " (from the error rates it reports)" if row["metric"].endswith("err") else ""
    return (f"{gain:+.2f} {where}: {row['method']} {row['reported_acc']:.2f} vs KD {k:.2f}{error}; "
            f"source: {row['source']}")


def _v1_cell(paired: pd.DataFrame, method: str) -> str:
    """Version 1's difference from KD and its verdict for ``method``: its default configuration, else (a
    method whose paper's weights are not kdlib's defaults) its variant with the fewest options, named."""
    rows = paired[paired["method"] == method] if len(paired) else paired
    if not len(rows):
        return "not run"
    default = rows[rows["variant"] == "default"]
    row = default.iloc[0] if len(default) else rows.loc[rows["variant"].str.count(",").idxmin()]
    verdict = str(row["last epoch: verdict"]).replace(" kd", " KD")
    named = "" if row["variant"] == "default" else f" ({options_in_words(row['variant'])})"
    return f"{row['top-1 minus kd, last epoch']}: {verdict}{named}"


def _weight(row: pd.Series) -> str:
    """``cd_weight 24 (×4, an end of the grid)``: a tuned method's chosen weight."""
    weights = ", ".join(f"{k} {v:g}" for k, v in (row["overrides"] or {}).items())
    return f"{weights} (×{row['multiplier']:g}{', an end of the grid' if row['end'] else ''})"


def claims_table(v1: pd.DataFrame | None = None, tuning: pd.DataFrame | None = None,
                 final: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per channel method, what its paper claims beside what this study measured: public code, the paper's
    gain over KD on CIFAR-100, version 1's verdict at the paper's weights, version 2's tuned weight and its
    difference from KD with Holm's verdict, and version 3's (its first pair) once complete: how each verdict
    moved from version to version."""
    reported = results.map_reported(pd.read_csv(REPORTED_CSV, dtype=str, keep_default_na=False),
                                    results.load_method_map())
    code = pd.read_csv(OFFICIAL_CODE_CSV, dtype=str, keep_default_na=False).set_index("method")
    paired = report.paired(report.study_records() if v1 is None else v1)
    ends = grid_ends(tuning).set_index("method")
    data = forest_data(final)
    kd = data[data["baseline"] == "kd"].set_index("method") if len(data) else pd.DataFrame()
    v3 = _v3_cells()
    rows = []
    for method in CHANNEL_METHODS:
        c = code.loc[method] if method in code.index else None
        public = (f"[yes, {c['commit']}](https://{c['code']}/tree/{c['commit']})"
                  + (f" ({c['note']})" if c["note"] else "")) if c is not None and c["code"] else (
                  (c["note"] or "no") if c is not None else "not recorded")
        v1cell = _v1_cell(paired, method)
        weight = "not tuned" if method not in ends.index else _weight(ends.loc[method])
        if method in kd.index:
            v2cell = _kd_cell(kd.loc[method])
        else:
            v2cell = "waiting for the final runs" if data.empty else "not in the final comparison"
        rows.append({"method": display_name(method), "public code": public,
                     "paper's gain over KD, CIFAR-100 (top-1 points)": _reported_claim(method, reported),
                     "version 1 minus KD (paper's weights, 3 seeds)": v1cell,
                     "version 2 weight (tuned)": weight, "version 2 minus KD [95% CI]": v2cell,
                     "version 3 minus KD [95% CI]": v3[method]})
    return pd.DataFrame(rows)


#: Version 3's decisive stratum, whose verdict the claims table shows once it is complete.
V3_PROFILE = "proxy_v3"


def _v3_cells() -> dict[str, str]:
    """Each channel method's version-3 difference from KD with Holm's verdict, or where version 3 stands
    while it is under way (the same words for every method)."""
    if not staged_report.complete(V3_PROFILE):
        done, planned = staged_report.progress(V3_PROFILE)["final"]
        waiting = f"under way ({done} of {planned} final runs)" if planned else "under way (tuning)"
        return dict.fromkeys(CHANNEL_METHODS, waiting)
    v3 = staged_report.family_table(V3_PROFILE, "vs kd").set_index("method")
    return {m: _kd_cell(v3.loc[m]) if m in v3.index else "not in version 3" for m in CHANNEL_METHODS}


def _kd_cell(row: pd.Series) -> str:
    """A row of :func:`kdlib.comparison.holm_comparisons` against KD as the claims table shows it:
    ``-1.05 [-1.87, -0.23], Holm p = 0.017: below KD``."""
    verdict = {"above": "above KD", "below": "below KD"}.get(row["verdict"], row["verdict"])
    return f"{_interval(row)}, {stats.p_phrase(row['p_holm'])}: {verdict}"


#: The second study's figures for the book's ``kdlib-figure`` directive, by name, and their caption and alt
#: text.
FIGURES: dict[str, Callable[..., list[Figure]]] = {"v2-forest": forest}
FIGURE_TEXT: dict[str, Callable[..., dict[str, str]]] = {"v2-forest": forest_text}


#: The second study's tables for the book's ``kdlib-table`` directive, by name.
TABLES: dict[str, Callable[..., pd.DataFrame]] = {
    "power-v2": power_table,
    "claims": claims_table,
}
