"""The test harness's shared resources: Redis DB numbers in one table, none repeated, none hard-coded
elsewhere; servers on kernel-chosen ports."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from coscope import harness

ROOT = Path(__file__).resolve().parents[2]
HARD_CODED_DB = re.compile(r"(127\.0\.0\.1|localhost):6379/\d|\bdb\s*=\s*\d")  # on the shared server


def test_every_redis_db_owner_has_its_own_number():
    numbers = list(harness.REDIS_DBS.values())
    assert len(numbers) == len(set(numbers)), harness.REDIS_DBS
    assert all(1 <= number <= 15 for number in numbers)  # 0 is development's; Redis has 16 by default


def test_an_unknown_owner_gets_no_number():
    with pytest.raises(KeyError, match="add it to coscope.harness.REDIS_DBS"):
        harness.redis_db("tests.service.test_new_module")


def test_no_test_or_benchmark_hard_codes_a_redis_db_number():
    offenders = [f"{path.relative_to(ROOT)}:{number}"
                 for folder in ("tests", "bench") for path in sorted((ROOT / folder).rglob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if HARD_CODED_DB.search(line)]
    assert offenders == [], "take Redis DB numbers from coscope.harness.redis_db(__name__)"


def test_free_port_is_bindable_and_not_a_fixed_one():
    port = harness.free_port()
    assert port not in (6379, 5432, 8000, 5555)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # nothing else holds it
