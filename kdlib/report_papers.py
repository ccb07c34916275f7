"""Each paper's own table as the paper shows it, for the method chapters (``paper-table``, ``paper-sources``).

One compact table per paper, read from ``data/reported/reported_results.csv`` through
:func:`kdlib.results.compare`, so the rows are mapped to kdlib methods by ``data/reported/method_map.json`` as
in the ``reported-vs-measured`` table. Its columns are the teacher → student pairs, in the order the paper
lists them; its rows the teacher, the student alone, KD, the method, and the method's gain over KD (Δ, in
top-1 points, computed here from the two rows). Every reported number is shown as published (``"70.04*"``
stays so); an error rate stays an error rate unless the paper's :class:`PaperTable` asks for accuracy. Where
the study has a measured cell of the same dataset, pair, method and variant, a row ``ours: …`` puts our mean
(last epoch, with its 95% interval) beside it. :func:`paper_sources` names each source once, for the line
under the table.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable

import pandas as pd

from kdlib import report, results

#: What a metric of the CSV is called above its numbers.
METRIC_WORDS = {"top1_acc": "top-1 accuracy (%)", "top1_err": "top-1 error (%)",
                "top5_acc": "top-5 accuracy (%)", "top5_err": "top-5 error (%)"}
#: The name of a pair's teacher or student that says none is named.
_UNNAMED = re.compile(r"^(|-|n/a|not stated.*)$")


@dataclasses.dataclass(frozen=True)
class PaperTable:
    """How one paper's table is drawn from the CSV, by labels only, since every number comes from the CSV.

    ``rows`` are (the row's name in the book, the CSV ``method`` labels it takes, any of them); ``method``
    and ``baseline`` name two of those rows, and the Δ row is ``method`` − ``baseline`` in accuracy points
    (for an error rate, ``baseline`` − ``method``); no Δ row when either is empty. ``accuracy`` shows an
    error rate as ``100 − error`` (only where the chapter says so)."""

    datasets: tuple[str, ...]
    metrics: tuple[str, ...]
    rows: tuple[tuple[str, tuple[str, ...]], ...]
    method: str = ""
    baseline: str = "KD"
    accuracy: bool = False


#: The table of each paper, by its ``paper`` label in the CSV. CCS has no reported row.
PAPERS: dict[str, PaperTable] = {
    "ICKD": PaperTable(
        datasets=("CIFAR-100",), metrics=("top1_acc",),
        rows=(("teacher", ("Teacher",)), ("student alone", ("Vanilla",)), ("KD", ("KD",)),
              ("ICKD-C without KD", ("ICKD-C(w/o KL)",)), ("ICKD-C", ("ICKD-C(Ours)",))),
        method="ICKD-C"),
    "CD": PaperTable(
        datasets=("CIFAR-100",), metrics=("top1_err",),
        rows=(("teacher", ("teacher",)), ("student alone", ("student",)), ("KD", ("KD",)),
              ("CD", ("CD(our)",)), ("CD+GKD", ("CD+GKD(our)",)), ("CD+GKD+EDT", ("CD+GKD+EDT(our)",))),
        method="CD+GKD+EDT"),
    "IE-KD (CVPR2021)": PaperTable(
        datasets=("CIFAR-10", "ImageNet-1K"), metrics=("top1_err",),
        rows=(("baseline (not named)", ("baseline (row unspecified)",)),
              ("IE-KD", ("IE-KD", "IE-KD (IE-augmented method)"))),
        method="IE-KD", baseline="baseline (not named)"),
    "CWT (arXiv 2303.13212; ICCVW2023)": PaperTable(
        datasets=("ImageNet-1K", "MS COCO", "Cityscapes"),
        metrics=("top-1 gain (pp)", "bbox mAP gain", "mask mAP gain", "mIoU gain"),
        rows=(("gain over the student alone", ("CWT vs student baseline",)),)),
}


def _name(text: object) -> str:
    """A teacher's or student's name without what the CSV says beside it (``ResNet50 (no distillation)`` →
    ``ResNet50``); empty when none is named (``-``, ``(teacher itself)``, ``not stated in abstract``)."""
    name = re.sub(r"\s*\(.*\)$", "", str(text if isinstance(text, str) else "")).strip()
    return "" if _UNNAMED.match(name) else name


def _same(row: pd.Series, column: pd.Series, who: str) -> bool:
    """Whether ``row`` can stand in ``column`` for the ``who`` (teacher or student): the same id where both
    have one, else the same name; a row that names none fits any column."""
    ident, other = row[f"{who}_id"], column[f"{who}_id"]
    if isinstance(ident, str) and isinstance(other, str):
        return ident == other
    return not _name(row[who]) or _name(row[who]) == _name(column[who])


def compared_rows(paper: str, records: pd.DataFrame | None = None) -> pd.DataFrame:
    """The rows of :func:`kdlib.results.compare` for ``paper``: every reported row, mapped, with our
    measurement of the same configuration where there is one (the study's records by default)."""
    records = report.study_records() if records is None else records
    empty = pd.DataFrame(columns=[*results.CONFIG_KEYS, "n", "diverged", "top1_last_mean", "top1_best_mean"])
    summary = results.summarize(records) if len(records) else empty
    compared = results.compare(summary)
    return compared[compared["paper"] == paper].reset_index(drop=True)


def _columns(spec: PaperTable, rows: pd.DataFrame) -> pd.DataFrame:
    """One row per column of the paper's table: the pairs of the table's rows, in the order the CSV (the
    paper) first lists them. A dataset's columns come from its rows that name both teacher and student, or,
    where none does (a teacher the source does not name), from those that name the student."""
    labels = {label for _, many in spec.rows for label in many}
    shown = rows[rows["method"].isin(labels) & rows["metric"].isin(spec.metrics)]
    picked = []
    for dataset in spec.datasets:
        here = shown[shown["dataset"] == dataset]
        here = here[[bool(_name(s)) for s in here["student"]]]
        both = here[[bool(_name(t)) for t in here["teacher"]]]
        picked.append(both if len(both) else here)
    named = pd.concat(picked) if picked else shown.iloc[:0]
    key = named["dataset"] + "|" + named["teacher"].fillna("") + "|" + named["student"].fillna("")
    return named.loc[~key.duplicated()].reset_index(drop=True)


def _header(column: pd.Series, datasets: int) -> str:
    teacher, student = _name(column["teacher"]), _name(column["student"]) or str(column["student"])
    pair = f"{teacher} → {student}" if teacher else student
    return f"{column['dataset']}: {pair}" if datasets > 1 else pair


def _cell(rows: pd.DataFrame, labels: tuple[str, ...], column: pd.Series,
          metrics: tuple[str, ...]) -> pd.Series | None:
    """The one reported row of ``labels`` and ``metrics`` that stands in ``column`` (None when there is
    none)."""
    here = rows[(rows["dataset"] == column["dataset"]) & rows["method"].isin(labels)
                & rows["metric"].isin(metrics)]
    fits = here[[_same(r, column, "teacher") and _same(r, column, "student") for _, r in here.iterrows()]]
    if len(fits) > 1:
        raise ValueError(f"{len(fits)} reported rows of {labels} fit {column['dataset']} "
                         f"{column['teacher']} → {column['student']}; the table needs one")
    return fits.iloc[0] if len(fits) else None


def _shown(row: pd.Series, accuracy: bool) -> str:
    """A reported value as published, or as ``100 − error`` when the table shows accuracy."""
    if accuracy and str(row["metric"]).endswith("_err"):
        return report.number(row["reported_acc"])
    return str(row["value"])


def _gain(method: pd.Series | None, baseline: pd.Series | None) -> str:
    """``method`` − ``baseline`` in accuracy points (signed, to the reported precision), or empty."""
    if method is None or baseline is None or method["metric"] != baseline["metric"]:
        return ""
    a, b = results.parse_reported_value(method["value"]), results.parse_reported_value(baseline["value"])
    if math.isnan(a) or math.isnan(b):
        return ""
    gain = (b - a) if str(method["metric"]).endswith("_err") else (a - b)
    digits = max(len(m.group(1)) if (m := re.match(r"\s*-?\d+\.(\d+)", str(v))) else 0
                 for v in (method["value"], baseline["value"]))
    return f"{gain:+.{digits}f}".replace("-", "−")


def _ours(row: pd.Series | None, error: bool) -> str:
    """Our last-epoch mean ± half-width of the 95% interval for ``row``, in the table's unit, or empty."""
    if row is None or row["status"] != results.STATUS_MEASURED:
        return ""
    mean, lo, hi = row["measured_last"], row["measured_last_lo"], row["measured_last_hi"]
    if error:
        mean, lo, hi = 100 - mean, 100 - hi, 100 - lo
    return report.mean_ci(mean, lo, hi, row["n"])


def paper_table(paper: str, records: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paper's table (see the module's docstring); empty for a paper with no :data:`PAPERS` entry or no
    reported row. The first column names the rows; its header says what the numbers are."""
    spec = PAPERS.get(paper)
    rows = compared_rows(paper, records) if spec else pd.DataFrame()
    columns = _columns(spec, rows) if len(rows) else pd.DataFrame()
    if not len(columns):
        return pd.DataFrame()
    headers = [_header(c, len(spec.datasets)) for _, c in columns.iterrows()]
    cells = {name: [_cell(rows, labels, c, spec.metrics) for _, c in columns.iterrows()]
             for name, labels in spec.rows}
    metrics = columns["metric"].unique()
    error = bool(len(metrics) == 1 and str(metrics[0]).endswith("_err") and not spec.accuracy)
    unit = METRIC_WORDS.get(str(metrics[0]).replace("_err", "_acc") if spec.accuracy else str(metrics[0]),
                            "as reported") if len(metrics) == 1 else "as reported"
    corner = f"{spec.datasets[0]}, {unit}" if len(spec.datasets) == 1 else unit
    body: dict[str, list[str]] = {}
    if len(metrics) > 1:
        body["measure"] = [str(m) for m in columns["metric"]]
    for name, found in cells.items():
        body[name] = ["" if r is None else _shown(r, spec.accuracy) for r in found]
    if spec.method and spec.baseline:
        body[f"Δ {spec.method} − {spec.baseline}, top-1 points"] = [
            _gain(m, b) for m, b in zip(cells[spec.method], cells[spec.baseline], strict=True)]
    for name, found in cells.items():
        ours = [_ours(r, error) for r in found]
        if any(ours):
            body[f"ours: {name} (last epoch)"] = ours
    table = pd.DataFrame(body, index=headers).T
    table.insert(0, corner, table.index)
    return table.reset_index(drop=True)


def paper_sources(paper: str, records: pd.DataFrame | None = None) -> pd.DataFrame:
    """Where each number of :func:`paper_table` comes from, each source named once: the reported rows' own
    ``source``, the Δ row (computed from the two rows it names) and our rows (``data/results/``)."""
    table = paper_table(paper, records)
    if table.empty:
        return pd.DataFrame()
    spec, rows = PAPERS[paper], compared_rows(paper, records)
    columns = _columns(spec, rows)
    used: dict[str, list[str]] = {}
    for name, labels in spec.rows:
        for (_, column), header in zip(columns.iterrows(), table.columns[1:], strict=True):
            row = _cell(rows, labels, column, spec.metrics)
            if row is not None:
                used.setdefault(str(row["source"]), []).append(f"{name}, {header}")
    whole = len(used) == 1
    out = [{"numbers": "every reported number above" if whole else "; ".join(cells), "source": source}
           for source, cells in used.items()]
    names = list(table.iloc[:, 0])
    out += [{"numbers": name, "source": f"the difference of the rows {spec.method} and {spec.baseline} "
             "above, computed when the book is built"} for name in names if name.startswith("Δ")]
    if any(name.startswith("ours:") for name in names):
        out.append({"numbers": "the rows ours: …", "source": "our run records in data/results/ (the mean of "
                    "the seeds' last-epoch top-1 and the half-width of its 95% interval)"})
    return pd.DataFrame(out)


#: The tables of the book's ``kdlib-table`` directive defined here, by name.
TABLES: dict[str, Callable[..., pd.DataFrame]] = {
    "paper-table": paper_table,
    "paper-sources": paper_sources,
}
