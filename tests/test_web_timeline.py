"""Runs the JavaScript unit tests (web/tests/*.test.mjs, node:test) so `python -m pytest`
covers them, and sanity-checks the shared schedule fixture both parsers are tested against."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "schedules.json"


def test_js_unit_tests_pass():
    node = shutil.which("node")
    if node is None:
        pytest.fail("node (>= 20) is required for the web/ unit tests")
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "web" / "tests").glob("*.test.mjs"))
    assert files, "no web/tests/*.test.mjs found"
    # explicit file list: directory arguments mean different things across node versions
    proc = subprocess.run([node, "--test", "--test-reporter=spec", *files], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"node --test failed:\n{out[-8000:]}"
    assert "# fail 0" in out or "ℹ fail 0" in out, out[-4000:]


def test_shared_schedule_fixture_is_well_formed():
    data = json.loads(FIXTURE.read_text(encoding="utf-8"))
    cases = data["parse"]
    assert 10 <= len(cases) <= 30
    assert len({c["name"] for c in cases}) == len(cases), "case names must be unique"
    for c in cases:
        assert isinstance(c["text"], str) and isinstance(c["errors"], list), c["name"]
        assert c["errors"] == sorted(c["errors"]), c["name"]
        if c["errors"]:
            assert "entries" not in c, f"{c['name']}: entries are only given for valid schedules"
        else:
            entries = c["entries"]
            assert entries and entries[0]["time"] == 0, c["name"]
            assert all(b["time"] > a["time"] and b["chunk"] > a["chunk"]
                       for a, b in zip(entries, entries[1:])), c["name"]
        for line in c.get("mentions", {}):
            assert int(line) in c["errors"], c["name"]
    assert data["snap"] and data["chunk_count"]
