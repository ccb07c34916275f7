"""A staged study's tables and answer, from its records, for any staged profile (``proxy_v2``, ``proxy_v3``,
``proxy_v3_resnet56``): one report path parameterised by the study, which its pages name.

- :func:`progress`: how many records each stage holds against what the protocol plans so far.
- :func:`teachers`, :func:`tuning`, :func:`final`: the teachers, each tuned method's grid with where its
  choice fell (:func:`kdlib.comparison.bracket`), each final configuration's mean test and validation top-1.
- :func:`families`, :func:`family_comparison`, :func:`ablations`: the protocol's comparisons, each family
  Holm-corrected on its own (a profile without ``comparisons`` compares every configuration with each
  baseline, as version 2 did).
- :func:`noise`: the SD of the paired differences to KD, and the part of it between teachers.
- :func:`cost`: the wall time each stage has taken, by CPU kind.
- :func:`answer`, :func:`headline`: the answer in words, and in plain words with its conditions (drawn by
  :mod:`kdlib.staged_forest`); :func:`newest_complete`: the newest of :data:`STUDIES` whose final runs are all
  recorded.

Nothing is compared until every final run of the study has its record, never from some of them.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kdlib import comparison, report, results, stats
from kdlib.methods import CHANNEL_METHODS, METHODS, make_config, options_in_words
from kdlib.paths import profile_file
from kdlib.study import staged

#: The staged studies the book answers from, newest first (each version's decisive pair).
STUDIES = ("proxy_v3", "proxy_v2")
#: Each version's further pairs, keyed by its decisive one; the landing page answers for them after it.
MORE_PAIRS = {"proxy_v3": ("proxy_v3_resnet56",)}
#: The names readers know methods by, where it is not the method's name in capitals.
DISPLAY = {"ce": "ce (student alone)", "iekd": "IE-KD"}


def display_name(method: str) -> str:
    """``CD``, ``IE-KD``, ``ce (student alone)``: a method as readers name it."""
    return DISPLAY.get(method, method.upper())


def short(method: str) -> str:
    """:func:`display_name` without its note: ``ce``, ``KD``, ``IE-KD``."""
    return display_name(method).split(" (")[0]


def in_words(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join(filter(None, [", ".join(items[:-1]), *items[-1:]]))


def version(profile: str) -> int:
    """The study's version (the profile's ``version``): how the book names it."""
    return int(json.loads(profile_file(profile, staged.PROFILES_DIR).read_text())["version"])


def stage_records(profile: str, stage: str) -> pd.DataFrame:
    """The completed and diverged records of one stage (``tuning``, ``final``) of ``profile``."""
    return report.study_records(staged.load_staged(profile).results_dir / stage)


def teacher_records(s: staged.Staged) -> pd.DataFrame:
    """The records of the study's teachers, installed beside their checkpoints."""
    paths = [staged.teacher_checkpoint(s, seed).parent / "record.json" for seed in s.teacher_seeds]
    return results.load_records([p for p in paths if p.is_file()], statuses=report.SHOWN)


@dataclass(frozen=True)
class StudyPlan:
    """What a study's tuning has decided so far: ``tuning`` (runs recorded, runs planned); the ``chosen``
    weights (:func:`kdlib.study.staged.chosen_weights`), with the multiples each method ``tried`` (those with
    a score, in order), ``where`` its choice fell (:func:`where`) and whether it is still ``waiting`` for runs
    (no weight chosen yet); the final configurations' ``names``
    (``{(method, variant): name}``); and the final runs planned. Empty until the teachers are, and the final
    plan until the tuning is complete."""

    tuning: tuple[int, int] = (0, 0)
    chosen: pd.DataFrame | None = None
    names: dict[tuple[str, str], str] = field(default_factory=dict)
    final: int = 0


def study_plan(profile: str) -> StudyPlan:
    """The study's :class:`StudyPlan`, computed once per state of the files it depends on (the profile, the
    teachers' checkpoints, the tuning's records): a page asks for it many times, and the tuning's choices
    take seconds to recompute."""
    s = staged.load_staged(profile)
    files = [profile_file(profile, staged.PROFILES_DIR),
             *(staged.teacher_checkpoint(s, seed) for seed in s.teacher_seeds),
             *sorted((s.results_dir / "tuning").rglob("record.json"))]
    return _study_plan(profile, tuple((str(p), p.stat().st_mtime_ns if p.exists() else None) for p in files))


@functools.lru_cache(maxsize=32)
def _study_plan(profile: str, files: tuple[tuple[str, int | None], ...]) -> StudyPlan:
    s = staged.load_staged(profile)
    if not staged._teachers_ready(s):
        return StudyPlan()
    records = staged._tuning_records(s)
    runs = staged.tuning_runs(s, records)
    missing = staged._missing(s, runs)
    chosen = staged.chosen_weights(s, records)
    chosen = chosen.assign(tried=[sorted(m for m, v in scores.items() if v is not None)
                                  for scores in chosen["scores"]],
                           where=[where(s, state) for state in chosen["state"]],
                           waiting=(chosen["state"] == comparison.WAITING) | chosen["multiplier"].isna())
    tuning = (len(runs) - len(missing), len(runs))
    if missing:
        return StudyPlan(tuning, chosen)
    names = {(v.method, v.variant): name for name, v in staged.final_variants(s, chosen)}
    return StudyPlan(tuning, chosen, names, len(staged.final_runs(s, chosen)))


def progress(profile: str) -> dict[str, tuple[int, int]]:
    """``{stage: (records in place, runs planned so far)}``: the final stage's plan is known once the tuning
    is complete (until then its planned count is 0)."""
    s = staged.load_staged(profile)
    out = {"teacher": (len(teacher_records(s)), len(s.teacher_seeds))}
    p = study_plan(profile)
    if p.chosen is None:
        return {**out, "tuning": (0, 0), "final": (0, 0)}
    return {**out, "tuning": p.tuning, "final": (len(stage_records(profile, "final")), p.final)}


def complete(profile: str) -> bool:
    """Whether every final run the protocol plans has its record."""
    return _complete(progress(profile))


def _complete(stand: dict[str, tuple[int, int]]) -> bool:
    done, planned = stand["final"]
    return bool(planned) and done >= planned


def names(profile: str) -> dict[tuple[str, str], str]:
    """``{(method, variant): configuration name}`` of the final configurations (empty before the tuning
    is complete)."""
    return study_plan(profile).names


def label(name: str, variant: str) -> str:
    """A configuration as readers name it: its name, its method as readers write it, and its options in
    words: ``CD (cd_weight 24)``, ``CD without GKD (cd_weight 24, gkd_weight 0)``, ``KD (default weights)``,
    ``ce (student alone)``."""
    if variant != "default":
        return f"{shown(name)} ({options_in_words(variant)})"
    return display_name(name) if name == "ce" else f"{shown(name)} (default weights)"


def shown(name: str) -> str:
    """A configuration's name with the method it starts with as readers write it: ``CD without GKD``."""
    head, _, rest = name.partition(" ")
    return " ".join([short(head) if head in METHODS else head] + [rest] * bool(rest))


def teachers(profile: str) -> pd.DataFrame:
    """One row per teacher, from the records installed beside the checkpoints."""
    frame = teacher_records(staged.load_staged(profile))
    if not len(frame):
        return pd.DataFrame()
    return pd.DataFrame({
        "teacher": frame["student"], "seed": frame["seed"],
        "test top-1": [report.number(v) for v in frame["top1_last"]],
        "validation top-1": [report.number(v) for v in frame["val_top1_last"]],
        "hardware": report.hardware(frame),
        "hours": [report.number(v / 3600) for v in frame["wall_time_s"]],
        "commit": [results.commit_label(c, d) for c, d in zip(frame["git_commit"], frame["git_dirty"],
                                                                strict=True)],
    })


def tuning(profile: str) -> pd.DataFrame:
    """Each tuned method: its main weight, its runs, the mean validation top-1 (last epoch, over the tuning
    seeds) at every multiple of the default tried (a column per multiple any method tried; ``–`` where this
    one did not, or could not choose it), the chosen multiple (``none yet`` while the tuning waits for runs)
    and where it fell (interior, at the limit, waiting for runs). The test set is not read."""
    records, chosen = stage_records(profile, "tuning"), study_plan(profile).chosen
    if chosen is None or not len(records):
        return pd.DataFrame()
    multiples = sorted({m for tried in chosen["tried"] for m in tried})
    rows = []
    for row in chosen.itertuples():
        default = make_config(row.method)
        cells = {"method": row.method, "runs": int((records["method"] == row.method).sum()),
                 "main weight (default)": ", ".join(f"{name} = {getattr(default, name):g}"
                                                    for name in comparison.MAIN_WEIGHTS[row.method])}
        for m in multiples:
            score = row.scores.get(m)
            cells[multiple(m)] = "–" if score is None else report.number(score)
        cells["chosen"] = "none yet" if row.waiting else multiple(row.multiplier)
        cells["where"] = row.where
        rows.append(cells)
    return pd.DataFrame(rows)


#: Where a chosen weight fell when the tuning's grid is fixed (no ``extend``) and it is at an end of it.
FIXED_END = "at an end of the fixed grid"


def where(s: staged.Staged, state: str) -> str:
    """Where a tuned method's choice fell (:func:`kdlib.comparison.bracket`'s state): interior, at the limit,
    waiting for runs, or, on a fixed grid, :data:`FIXED_END`."""
    return FIXED_END if state == comparison.AT_LIMIT and not s.tuning.get("extend") else state


def caveat(profile: str) -> str:
    """The tuned methods whose chosen weight is at an end of the weights tried (the rule's limit, or an end
    of a fixed grid), in one sentence; empty when every choice is interior."""
    tuned = tuning(profile)
    if not len(tuned):
        return ""
    limit = [short(m) for m in tuned.loc[tuned["where"] == comparison.AT_LIMIT, "method"]]
    ends = [short(m) for m in tuned.loc[tuned["where"] == FIXED_END, "method"]]
    if ends:
        grid = ", ".join(multiple(m) for m in staged.load_staged(profile).tuning["multipliers"])
        return (f"{len(ends)} of the {len(tuned)} tuned weights sit at an end of the {grid} grid "
                f"({', '.join(ends)}), so those methods may do better, or worse, at a weight this study did "
                "not try.")
    return (f"Tuning stopped at the limit for {', '.join(limit)}: a weight beyond it was not tried." if limit
            else "")


def multiple(m: float) -> str:
    """A multiple of a default weight as a reader writes it: ``×4``, ``×1``, ``×1/16``."""
    return f"×{m:g}" if m >= 1 else f"×1/{round(1 / m):g}"


def _named(records: pd.DataFrame, known: dict[tuple[str, str], str]) -> pd.DataFrame:
    """``records`` with a ``configuration`` column: its name in ``known`` (:func:`names`; None for other
    runs)."""
    return records.assign(configuration=[known.get((m, v)) for m, v in
                                         zip(records["method"], records["variant"], strict=True)])


def final(profile: str) -> pd.DataFrame:
    """Each final configuration: its weight, runs (by CPU kind), and mean test and validation top-1 (last
    epoch) with the 95% interval over its seeds."""
    records = _named(stage_records(profile, "final"), names(profile))
    if not len(records):
        return pd.DataFrame()
    order = {c.name: k for k, c in enumerate(staged.load_staged(profile).configurations)}
    records = records.sort_values("configuration", key=lambda c: c.map(order), kind="stable")
    rows = []
    for (name, variant), group in records.groupby(["configuration", "variant"], sort=False):
        done = group[group["status"] == "completed"]
        cells = {}
        for column, metric in (("test top-1", "top1_last"), ("validation top-1", "val_top1_last")):
            values = done[metric].astype(float)
            cells[column] = report.mean_ci(values.mean(), *results.mean_interval(values), len(done))
        kinds = pd.Series(report.hardware(group)).value_counts()
        rows.append({"configuration": label(name, variant), "runs": len(done),
                     "diverged": int((group["status"] == results.STATUS_DIVERGED).sum()), **cells,
                     "hardware": ", ".join(f"{kind} ({n})" for kind, n in kinds.items())})
    return pd.DataFrame(rows)


def families(profile: str) -> dict[str, dict[str, Any]]:
    """The protocol's families of comparisons with a baseline (``{name: {"baseline", "configurations"}}``):
    the profile's ``comparisons``, or every configuration against each baseline."""
    s = staged.load_staged(profile)
    given = s.final.get("comparisons")
    if given:
        return {k: v for k, v in given.items() if "baseline" in v}
    every = [c.name for c in s.configurations]
    return {f"vs {b}": {"baseline": b, "configurations": [c for c in every if c != b]}
            for b in s.final["baselines"]}


def _with(records: pd.DataFrame, configurations: list[str]) -> pd.DataFrame:
    return records[records["configuration"].isin(configurations)]


def family_table(profile: str, family: str) -> pd.DataFrame:
    """:func:`kdlib.comparison.holm_comparisons` over one family's records (numbers, not text), with each
    row's ``label``; call it once :func:`complete` is true."""
    spec = families(profile)[family]
    known = names(profile)
    records = _named(stage_records(profile, "final"), known)
    members = _with(records, [spec["baseline"], *spec["configurations"]])
    table = comparison.holm_comparisons(members, spec["baseline"], staged.load_staged(profile).final["alpha"])
    return table.assign(label=[label(known[(m, v)], v) for m, v in zip(table["method"], table["variant"],
                                                                       strict=True)])


def family_rows(profile: str) -> pd.DataFrame:
    """Every family's rows (:func:`family_table`), each with its family's ``baseline``; call it once
    :func:`complete` is true."""
    return pd.concat([family_table(profile, family).assign(baseline=spec["baseline"])
                      for family, spec in families(profile).items()], ignore_index=True)


def own_rows(profile: str) -> pd.DataFrame:
    """:func:`family_rows` of the configurations named as their method: each method's own configuration, not
    an ablation; call it once :func:`complete` is true."""
    known = names(profile)
    rows = family_rows(profile)
    own = [known[(m, v)] == m for m, v in zip(rows["method"], rows["variant"], strict=True)]
    return rows[own].reset_index(drop=True)


def family_comparison(profile: str, family: str) -> pd.DataFrame:
    """One family's configurations minus its baseline (test top-1 points, last epoch, paired seeds), with
    the paired t-test's p-value and Holm's over the family; empty until every final run has its record."""
    if not complete(profile):
        return pd.DataFrame()
    table = family_table(profile, family)
    return pd.DataFrame({
        "configuration": table["label"], "paired seeds": table["n"],
        f"minus {shown(families(profile)[family]['baseline'])}": [
            report.mean_ci(m, lo, hi, n) for m, lo, hi, n in
            zip(table["mean"], table["lo"], table["hi"], table["n"], strict=True)],
        "p": [stats.format_p(p) for p in table["p"]],
        "Holm p": [stats.format_p(p) for p in table["p_holm"]],
        "verdict": table["verdict"],
    })


def answer(profile: str) -> str:
    """The study's answer in words (Markdown) once every final run has its record
    (:func:`kdlib.comparison.answer` over the protocol's families): per family, the configurations above and
    below its baseline after Holm's correction, with mean differences and 95% intervals, and those it cannot
    tell apart; the smallest difference its realised noise detects with 80% power; the tuned weights at an
    end of the weights tried (:func:`caveat`). Until then, where the study stands."""
    stand = progress(profile)
    if not _complete(stand):
        (teachers_done, teachers_planned), (tuned, planned) = stand["teacher"], stand["tuning"]
        (done, final_planned) = stand["final"]
        tuning_words = ("no tuning run (it starts once every teacher is)" if not planned else
                        f"all {planned} tuning runs" if final_planned else
                        f"{tuned} of the {planned} tuning runs planned so far")
        final_words = f"{done} of the {final_planned} final runs" if final_planned else f"{done} final runs"
        return (f"Under way: {teachers_done} of {teachers_planned} teachers, {tuning_words} and "
                f"{final_words} are recorded. The answer is written here once every final run is, never from "
                "some of them.")
    final, known = staged.load_staged(profile).final, names(profile)
    records = _named(stage_records(profile, "final"), known)
    specs = families(profile)
    tables = {spec["baseline"]: family_table(profile, family) for family, spec in specs.items()}
    kd = next((spec for spec in specs.values() if spec["baseline"] == "kd"), None)
    detectable = None if kd is None else comparison.power_statement(
        _with(records, [kd["baseline"], *kd["configurations"]]), len(final["seeds"]),
        len(kd["configurations"]), final["alpha"])["detectable"]
    words = comparison.answer(records, list(tables), final["alpha"], detectable=detectable,
                              label=lambda m, v: label(known[(m, v)], v), intervals=True, tables=tables,
                              more=[ablation_words(profile)])
    return f"{words}\n\n{caveat(profile)}".strip()


def conditions(records: pd.DataFrame) -> str:
    """The conditions a study's answer holds under, counted from its final records: teachers (distinct
    checkpoints), draws of the training images, pairs and epochs."""
    distilled = records[records["teacher"].notna()]
    teachers = distilled["teacher_ckpt_sha256"].nunique()
    subsets = len(records[["subset", "subset_seed"]].astype(str).drop_duplicates())
    pairs = distilled.groupby(["teacher", "student"]).ngroups
    first = distilled.iloc[0]
    return (f"It holds under narrow conditions: {_count(teachers, 'teacher')} ({first['teacher']}), "
            f"{_count(subsets, 'training subset')} of {int(first['subset']):,} Fashion-MNIST "
            f"images, {_count(pairs, 'pair')} ({first['teacher']} → {first['student']}), "
            f"{int(first['epochs'])} epochs.")


def _count(n: int, noun: str) -> str:
    words = {1: "one", 2: "two", 3: "three"}
    return f"{words.get(n, n)} {noun}{'' if n == 1 else 's'}"


def beats(table: pd.DataFrame, baseline: str, short: Callable[[str], str] | None = None) -> str:
    """One sentence: how many of the channel methods in ``table`` (one family's :func:`family_table`, or any
    :func:`kdlib.comparison.holm_comparisons` with a ``label``) are above ``baseline`` after Holm's
    correction, by how much (mean and 95% interval over the paired seeds), which fall below it (by their
    label, or by ``short(method)``) and which are within the noise."""
    channel = table[table["method"].isin(CHANNEL_METHODS)]
    above = channel[channel["verdict"] == "above"]
    below = channel[channel["verdict"] == "below"]
    seeds = stats.seed_range(channel["n"])
    named = "; ".join(f"{r.label} {r.mean:+.2f} [{r.lo:+.2f}, {r.hi:+.2f}]" for r in above.itertuples())
    lead = (f"**{len(above)} of the {len(channel)} channel methods beat{'s' * (len(above) == 1)} {baseline} "
            f"at this scale**: {named} "
            f"points of test top-1 (mean and 95% interval over {seeds} paired seeds); " if len(above) else
            f"**None of the {len(channel)} channel methods beats {baseline} at this scale**; ")
    noise = channel[~channel["verdict"].isin(["above", "below"])]

    def named_in(rows: pd.DataFrame) -> str:
        return in_words(list(rows["label"] if short is None else rows["method"].map(short)))

    parts = [f"{named_in(below)} {'falls' if len(below) == 1 else 'fall'} below it"] * bool(len(below)) + [
        f"{named_in(noise)} {'is' if len(noise) == 1 else 'are'} within its noise"] * bool(len(noise))
    return lead + f"{' and '.join(parts) or 'none is below it'}, after Holm's correction."


def headline(profile: str) -> str:
    """The study's answer in plain words for the landing page, once every final run is recorded (where it
    stands before, :func:`answer`): :func:`beats` for each family whose baseline is not ``ce``, the
    :func:`conditions`, and the tuned weights at an end of the weights tried (:func:`caveat`)."""
    if not complete(profile):
        return answer(profile)
    tables = {spec["baseline"]: family_table(profile, family) for family, spec in families(profile).items()
              if spec["baseline"] != "ce"}
    sentences = [beats(table, shown(baseline), short=short) for baseline, table in tables.items()
                 if table["method"].isin(CHANNEL_METHODS).any()]
    held = f"{conditions(stage_records(profile, 'final'))} {caveat(profile)}".strip()
    return "\n\n".join([*sentences, held])


def newest_complete(studies: tuple[str, ...] = STUDIES) -> str | None:
    """The newest of ``studies`` whose final runs are all recorded (None when none is)."""
    return next((profile for profile in studies if complete(profile)), None)


#: The profile a page names for the newest study whose final runs are all recorded.
NEWEST = "newest"


def resolve(profile: str) -> str:
    """``profile``, or for :data:`NEWEST` the newest complete study (:func:`newest_complete`; the newest
    study, under way, when none is complete)."""
    return (newest_complete() or STUDIES[0]) if profile == NEWEST else profile


def _differences(records: pd.DataFrame, a: str, b: str, metric: str = "top1_last") -> np.ndarray:
    """Configuration ``a`` minus configuration ``b``, seed by seed (completed runs of both)."""
    done = records[records["status"] == "completed"]
    left = done[done["configuration"] == a].set_index("seed")[metric].astype(float)
    right = done[done["configuration"] == b].set_index("seed")[metric].astype(float)
    common = left.index.intersection(right.index)
    return (left[common] - right[common]).to_numpy()


def ablation_differences(profile: str) -> pd.DataFrame:
    """Each ablation pair of the protocol, ``a`` minus ``b`` over paired seeds: ``comparison``, ``paired
    seeds``, ``mean``, ``lo``, ``hi`` (95% interval), ``p`` and ``p_holm`` (Holm over the pairs); empty until
    every final run has its record, or when the protocol names none."""
    pairs = staged.load_staged(profile).final.get("comparisons", {}).get("ablations", {}).get("pairs", [])
    if not pairs or not complete(profile):
        return pd.DataFrame()
    records = _named(stage_records(profile, "final"), names(profile))
    rows = []
    for a, b in pairs:
        d = _differences(records, a, b)
        lo, hi = results.mean_interval(d)
        rows.append({"comparison": f"{shown(a)} minus {shown(b)}", "paired seeds": len(d),
                     "mean": float(d.mean()), "lo": lo, "hi": hi, "p": stats.paired_test(d)[1]})
    table = pd.DataFrame(rows)
    return table.assign(p_holm=stats.holm(table["p"].tolist()))


def ablations(profile: str) -> pd.DataFrame:
    """:func:`ablation_differences` as the study page shows them, with each pair's verdict."""
    table = ablation_differences(profile)
    if table.empty:
        return table
    alpha = staged.load_staged(profile).final["alpha"]
    return pd.DataFrame({
        "comparison": table["comparison"], "paired seeds": table["paired seeds"],
        "difference": [report.mean_ci(m, lo, hi, n) for m, lo, hi, n in
                       zip(table["mean"], table["lo"], table["hi"], table["paired seeds"], strict=True)],
        "p": [stats.format_p(p) for p in table["p"]], "Holm p": [stats.format_p(p) for p in table["p_holm"]],
        "verdict": [("positive" if m > 0 else "negative") if h <= alpha else "within the corrected noise"
                    for m, h in zip(table["mean"], table["p_holm"], strict=True)],
    })


def ablation_words(profile: str) -> str:
    """The ablations in one sentence: each pair's difference with its 95% interval and Holm's p (Holm over
    the pairs); empty when there are none to state."""
    table = ablation_differences(profile)
    if table.empty:
        return ""
    parts = [f"{r.comparison} {r.mean:+.2f} [{r.lo:+.2f}, {r.hi:+.2f}] ({stats.p_phrase(r.p_holm)})"
             for r in table.itertuples()]
    seeds = stats.seed_range(table["paired seeds"])
    return (f"The ablations, over {seeds} paired seeds (test top-1 points, mean and 95% interval, Holm over "
            f"the {len(table)}): {'; '.join(parts)}.")


def noise(profile: str, baseline: str = "kd") -> pd.DataFrame:
    """The SD of the per-seed differences to ``baseline``, pooled over the configurations of its family, and
    its part between teachers: a one-way analysis of each configuration's differences by teacher checkpoint,
    ``σ²_between = max(0, (MS_between − MS_within) / n₀)``, pooled (with two teachers a rough estimate)."""
    if not complete(profile):
        return pd.DataFrame()
    records = _named(stage_records(profile, "final"), names(profile))
    spec = next(f for f in families(profile).values() if f["baseline"] == baseline)
    total, within, between, df = [], [], [], 0
    for name in spec["configurations"]:
        d = _by_teacher(records, name, baseline)
        if len(d) < 3:
            continue
        groups = [g.to_numpy() for _, g in d.groupby(level=0)]
        n, k = len(d), len(groups)
        total.append((n - 1, float(np.var(d.to_numpy(), ddof=1))))
        if k > 1:
            msw = sum(((g - g.mean()) ** 2).sum() for g in groups) / (n - k)
            msb = sum(len(g) * (g.mean() - d.mean()) ** 2 for g in groups) / (k - 1)
            n0 = (n - sum(len(g) ** 2 for g in groups) / n) / (k - 1)
            within.append((n - k, msw))
            between.append(max(0.0, (msb - msw) / n0))
        df += n - 1
    if not total:
        return pd.DataFrame()
    pooled = math.sqrt(sum(w * v for w, v in total) / sum(w for w, _ in total))
    row = {"baseline": baseline, "SD of paired differences": f"{pooled:.2f} ({df} df)"}
    if within:
        pooled_within = sum(w * v for w, v in within) / sum(w for w, _ in within)
        row["within a teacher"] = f"{math.sqrt(pooled_within):.2f}"
        row["between teachers"] = f"{math.sqrt(float(np.mean(between))):.2f}"
    return pd.DataFrame([row])


def _by_teacher(records: pd.DataFrame, name: str, baseline: str) -> pd.Series:
    """``name`` minus ``baseline`` seed by seed, indexed by the teacher checkpoint's SHA-256."""
    done = records[records["status"] == "completed"]
    mine = done[done["configuration"] == name].set_index("seed")
    base = done[done["configuration"] == baseline].set_index("seed")["top1_last"].astype(float)
    common = mine.index.intersection(base.index)
    teacher = mine.loc[common, "teacher_ckpt_sha256"].fillna(
        done[done["configuration"] == baseline].set_index("seed").loc[common, "teacher_ckpt_sha256"])
    return pd.Series((mine.loc[common, "top1_last"].astype(float) - base[common]).to_numpy(),
                     index=teacher.to_numpy())


def cost(profile: str) -> pd.DataFrame:
    """What each stage has cost so far, from its records' wall times (measured), by CPU kind."""
    s = staged.load_staged(profile)
    rows = []
    for stage, frame in (("teacher", teacher_records(s)), ("tuning", stage_records(profile, "tuning")),
                         ("final", stage_records(profile, "final"))):
        if not len(frame):
            continue
        for kind, group in frame.assign(kind=report.hardware(frame)).groupby("kind"):
            rows.append({"stage": stage, "hardware": kind, "runs": len(group),
                         "wall time, hours": report.number(group["wall_time_s"].sum() / 3600),
                         "median minutes per run": report.number(group["wall_time_s"].median() / 60, 1)})
    return pd.DataFrame(rows)


def provenance(profile: str) -> pd.DataFrame:
    """Every tuning and final record of the study, one row each (:func:`kdlib.report.provenance`)."""
    return report.provenance(pd.concat([stage_records(profile, "tuning"), stage_records(profile, "final")],
                                       ignore_index=True))


def progress_table(profile: str) -> pd.DataFrame:
    """:func:`progress` as a table: one row per stage, its records and the runs the protocol plans so far."""
    rows = []
    for stage, (done, planned) in progress(profile).items():
        if stage == "final" and not planned:
            state = "planned once the tuning is complete"
        else:
            state = "complete" if planned and done >= planned else "under way" if done else "not started"
        rows.append({"stage": stage, "records": done, "planned so far": planned or "", "state": state})
    return pd.DataFrame(rows)


#: The tables a staged study's pages render (the book's ``kdlib-table`` directive with ``:study:``), by
#: name; each takes the study's profile (and ``family`` where it compares one).
TABLES: dict[str, Any] = {
    "study-progress": progress_table, "study-teachers": teachers, "study-tuning": tuning,
    "study-final": final, "study-family": family_comparison, "study-ablations": ablations,
    "study-noise": noise, "study-cost": cost, "study-provenance": provenance,
}
