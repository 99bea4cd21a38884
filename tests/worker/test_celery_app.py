"""The worker's start-up checks: the Redis visibility timeout is a setting and must exceed the hard time
limit, or the worker refuses to start (R5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from store.broker import make_celery
from store.settings import Settings
from worker.celery_app import HARD_LIMIT_GRACE_SECONDS, check_visibility_timeout

ROOT = Path(__file__).resolve().parents[2]
REDIS = "redis://127.0.0.1:1/0"  # never connected: the checks run before any connection


def test_the_visibility_timeout_is_a_setting_passed_to_the_redis_transport(tmp_path, monkeypatch):
    monkeypatch.setenv("COSCOPE_VISIBILITY_TIMEOUT_SECONDS", "123")
    settings = Settings(home=tmp_path, broker_url=REDIS)
    assert settings.visibility_timeout_seconds == 123
    options = make_celery(settings).conf.broker_transport_options
    assert options["visibility_timeout"] == 123
    # kombu's sweep period is interval x throttle: every 10 s here, not its default 100 s past the timeout
    assert (options["unacked_restore_interval"], options["unacked_restore_throttle"]) == (10, 1)
    short = make_celery(Settings(home=tmp_path, broker_url=REDIS, visibility_timeout_seconds=3))
    assert short.conf.broker_transport_options["unacked_restore_interval"] == 1  # a sweep within the timeout
    assert Settings(home=tmp_path).visibility_timeout_seconds == 123  # read from the environment
    monkeypatch.delenv("COSCOPE_VISIBILITY_TIMEOUT_SECONDS")
    assert Settings(home=tmp_path).visibility_timeout_seconds == 48 * 3600
    assert make_celery(Settings(home=tmp_path)).conf.broker_transport_options == {}  # SQLAlchemy: none


@pytest.mark.parametrize(("timeout", "hard", "refused"),
                         [(100, 160, True), (160, 160, True), (161, 160, False), (10, None, False)])
def test_the_timeout_must_exceed_the_hard_limit(tmp_path, timeout, hard, refused):
    settings = Settings(home=tmp_path, broker_url=REDIS, visibility_timeout_seconds=timeout)
    if refused:
        with pytest.raises(ValueError, match="must exceed the hard per-job time limit"):
            check_visibility_timeout(settings, hard)
    else:
        check_visibility_timeout(settings, hard)
    check_visibility_timeout(Settings(home=tmp_path, visibility_timeout_seconds=1), 160)  # no Redis: no check


def test_coscope_worker_refuses_to_start_with_a_short_visibility_timeout(tmp_path):
    limit = 100
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("COSCOPE_")},
           "COSCOPE_HOME": str(tmp_path), "COSCOPE_BROKER_URL": REDIS,
           "COSCOPE_JOB_TIME_LIMIT_SECONDS": str(limit),
           "COSCOPE_VISIBILITY_TIMEOUT_SECONDS": str(limit + HARD_LIMIT_GRACE_SECONDS)}
    result = subprocess.run([sys.executable, "-m", "coscope.cli", "worker"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "refusing to start: COSCOPE_VISIBILITY_TIMEOUT_SECONDS (160 s) must exceed" in result.stderr
    assert "Traceback" not in result.stderr
