"""The API part of bench/service_overhead.py at a small size: a cold-started ``coscope serve --no-worker``
answers its submits with 201 and never maps torch. Timings are the benchmark's business, not asserted here."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # as `python bench/...` runs it

import service_overhead  # noqa: E402


def test_cold_started_api_takes_submits_without_torch(tmp_path):
    facts = service_overhead.measure_api(cold_starts=1, submits=5, workdir=tmp_path, imports=1)
    assert facts.statuses == {201: 5} and facts.errors == 0
    assert facts.torch is False
    assert len(facts.cold_starts) == 1 and len(facts.latencies) == 5
    assert 0 < facts.memory["VmRSS"] <= facts.memory["VmHWM"]
