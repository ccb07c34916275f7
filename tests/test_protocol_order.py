"""Each version of the proxy study was fixed before it ran: the commit that first added its protocol precedes
(is a strict ancestor of) the first commit of every record and teacher record of that version, every record
was made from a commit that holds the protocol, and what a protocol fixed is never rewritten afterwards
(changes go below its ``## Amendments`` heading)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kdlib import comparison, report
from kdlib.paths import RESULTS_DIR

REPO = Path(__file__).resolve().parents[1]
#: Each version's protocol page and the folders of its records.
VERSIONS = {
    "v2": ("book/protocol_v2.md", ("data/results/proxy_v2", "data/teachers_v2")),
    "v3": ("book/protocol_v3.md", ("data/results/proxy_v3", "data/teachers_v3")),
}
AMENDMENTS = "\n## Amendments\n"


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def history() -> None:
    try:
        _git("rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the order of commits cannot be checked")


def first_commit(path: str) -> str | None:
    """The commit that first added ``path`` on the current history (None if it was never committed)."""
    added = _git("log", "--diff-filter=A", "--format=%H", "--", path).split()
    return added[-1] if added else None


def committed_records(folders: tuple[str, ...]) -> list[str]:
    """Every committed record (``record.json``) under ``folders`` in the current history."""
    return sorted({line for line in _git("log", "--diff-filter=A", "--name-only", "--format=", "--",
                                          *folders).split() if line.endswith("record.json")})


def _is_ancestor(older: str, newer: str) -> bool:
    merge_base = ["git", "-C", str(REPO), "merge-base", "--is-ancestor", older, newer]
    return subprocess.run(merge_base).returncode == 0


@pytest.mark.parametrize("version", list(VERSIONS))
def test_the_protocol_was_committed_before_any_record(history: None, version: str) -> None:
    protocol_page, folders = VERSIONS[version]
    records = committed_records(folders)
    protocol = first_commit(protocol_page)
    if records:
        assert protocol is not None, f"{version} records are committed but {protocol_page} never was"
    for record in records:
        made = first_commit(record)
        assert made != protocol, f"{record} was committed together with the protocol, not after it"
        assert _is_ancestor(protocol, made), f"{record} ({made[:10]}) was committed before {protocol_page}"


def test_every_v3_record_was_made_from_code_that_holds_its_protocol(history: None) -> None:
    """A version-3 run itself (not only its commit) comes after the protocol: the commit it names holds it."""
    protocol_page, folders = VERSIONS["v3"]
    protocol = first_commit(protocol_page)
    for folder in folders:
        for path in sorted((REPO / folder).rglob("record.json")):
            made_from = json.loads(path.read_text())["git_commit"]
            assert protocol and _is_ancestor(protocol, made_from), (
                f"{path.relative_to(REPO)} was made from {made_from[:10]}, before {protocol_page}")


@pytest.mark.parametrize("version", ["v3"])
def test_what_the_protocol_fixed_is_never_rewritten(history: None, version: str) -> None:
    """Everything above ``## Amendments`` is as first committed; later changes are amendments below it."""
    protocol_page, _ = VERSIONS[version]
    first = first_commit(protocol_page)
    if first is None:
        pytest.skip(f"{protocol_page} is not committed yet")
    fixed = _git("show", f"{first}:{protocol_page}")
    now = (REPO / protocol_page).read_text()
    assert AMENDMENTS in fixed and AMENDMENTS in now, f"{protocol_page} needs a '## Amendments' section"
    assert now.split(AMENDMENTS)[0] == fixed.split(AMENDMENTS)[0], (
        f"{protocol_page} was changed above '## Amendments' after it was fixed: write the change as an "
        "amendment instead")


def test_the_v3_power_table_is_what_version_2s_records_give() -> None:
    """The power table fixed in protocol v3 is :func:`kdlib.comparison.power_table` of v2's final records."""
    records = report.study_records(RESULTS_DIR / "proxy_v2" / "final")
    design = [("first pair, vs KD, DKD or ce", 7, 15), ("first pair, decisive (CD, CWT)", 7, 20),
              ("first pair, ablations (CD's: 20)", 3, 15), ("second pair, vs KD, DKD or ce", 4, 10)]
    table = comparison.power_table(records, design).to_markdown(index=False, disable_numparse=True)
    assert table in (REPO / VERSIONS["v3"][0]).read_text()
