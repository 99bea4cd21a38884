"""The load test (bench/load_submit.py) at a small size against the embedded service: no 5xx, every job
accounted for. Timings are the benchmark's business, not asserted here."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # as `python bench/...` runs it

import load_submit  # noqa: E402


def test_concurrent_teams_get_no_5xx_and_every_job_is_accounted_for(tmp_path):
    stack = load_submit.start_stack("embedded", tmp_path / "home")
    try:
        outcome = load_submit.run_load(stack, jobs=21, clients=6, teams=3, drain_timeout=120)
    finally:
        stack.close()
    assert outcome.problems == [] and outcome.server_errors == 0 and outcome.tracebacks == 0
    assert outcome.drain_seconds is not None
    per_team = {team: len(ids) for team, ids in outcome.submitted.items()}
    assert per_team == {"team-a": 7, "team-b": 7, "team-c": 7}
    assert outcome.final == {"succeeded": 21} and outcome.attempts == {1: 21}
    assert outcome.http == {201: 21} and len(outcome.latencies) == 21
