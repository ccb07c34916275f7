"""Version 2 of the proxy study was fixed before it ran: the commit that first added its protocol precedes
(is a strict ancestor of) the first commit of every version-2 record and teacher record."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = "book/protocol_v2.md"
V2_RECORDS = ("data/results/proxy_v2", "data/teachers_v2")


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout


def first_commit(path: str) -> str | None:
    """The commit that first added ``path`` on the current history (None if it was never committed)."""
    added = _git("log", "--diff-filter=A", "--format=%H", "--follow", "--", path).split()
    return added[-1] if added else None


def v2_records() -> list[str]:
    """Every committed version-2 record (``record.json``) in the current history."""
    return sorted({line for line in _git("log", "--diff-filter=A", "--name-only", "--format=", "--",
                                          *V2_RECORDS).split() if line.endswith("record.json")})


def test_the_v2_protocol_was_committed_before_any_v2_record() -> None:
    try:
        _git("rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the order of commits cannot be checked")
    records = v2_records()
    protocol = first_commit(PROTOCOL)
    if records:
        assert protocol is not None, f"v2 records are committed but {PROTOCOL} never was"
    for record in records:
        made = first_commit(record)
        assert made != protocol, f"{record} was committed together with the protocol, not after it"
        ancestor = subprocess.run(["git", "-C", str(REPO), "merge-base", "--is-ancestor", protocol, made])
        assert ancestor.returncode == 0, f"{record} ({made[:10]}) was committed before {PROTOCOL}"
