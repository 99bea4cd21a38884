"""Warm shutdown: a job that is running when its worker is told to stop checkpoints at its next step and goes
back to the queue without using up an attempt, so a deploy does not count against ``max_attempts``.

SIGTERM (what ``docker stop`` sends a container's PID 1: the Celery parent, since ``coscope worker`` execs
Celery) reaches only the parent. Celery's warm shutdown then stops consuming and waits for the running task,
and the pool child that runs it never hears of the shutdown. So the parent forwards it: on
``worker_shutting_down`` it sends ``HAND_BACK_SIGNAL`` to its pool processes, once a second until it exits (a
child ignores the signal until its task starts listening). The child records the request in ``requested``,
which ``worker.runner`` reads in the lease's cancel check: the trainer saves a checkpoint and raises
``Cancelled``, and the runner hands the job back (``store.crud.hand_back``). A message the stopping worker
still receives (Celery's sync loop drains the broker once more after the signal, and the reconciler may
re-send the handed-back job meanwhile) goes to a child forked after the shutdown began, which inherits
``requested``: ``worker.tasks`` rejects it back to the broker before any claim.

The forwarded signal is SIGUSR2, not SIGTERM: Celery itself sends a pool child SIGTERM at the hard time limit
and when the broker connection is lost, and a job killed there must use up its attempt as before.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

log = logging.getLogger("coscope.worker")
HAND_BACK_SIGNAL = signal.SIGUSR2
FORWARD_EVERY_SECONDS = 1.0

_requested = threading.Event()  # set in the child and the parent (children forked after inherit it)


def requested() -> bool:
    """In a pool child: whether the worker asked the running job to checkpoint and hand itself back."""
    return _requested.is_set()


def listen() -> None:
    """In a pool child, as its task starts (``task_prerun``): the hand-back signal sets ``requested``."""
    signal.signal(HAND_BACK_SIGNAL, lambda *_: _requested.set())


def shield() -> None:
    """In the worker's parent, before the pool forks: ignore the hand-back signal. Each pool child inherits
    that until its task listens, so a child signalled earlier is not ended by it: neither by the signal's
    default action nor by billiard's exit handler, which billiard installs only over signals not ignored."""
    if signal.getsignal(HAND_BACK_SIGNAL) is signal.SIG_DFL:
        signal.signal(HAND_BACK_SIGNAL, signal.SIG_IGN)


def forward(pool_processes: Callable[[], list[int]]) -> None:
    """In the worker's parent, as its warm shutdown begins: set ``requested`` here too, so that a pool child
    forked from now on starts with it set, and signal the pool processes now and every
    ``FORWARD_EVERY_SECONDS`` until this process exits (a daemon thread)."""
    _requested.set()

    def keep_forwarding() -> None:
        while True:
            try:
                pids = pool_processes()
            except Exception:  # the pool is gone: the shutdown is past the point of running jobs
                return
            for pid in filter(None, pids):
                try:
                    os.kill(pid, HAND_BACK_SIGNAL)
                except ProcessLookupError:
                    pass
            time.sleep(FORWARD_EVERY_SECONDS)

    log.info("warm shutdown: asking the running job to checkpoint and go back to the queue")
    threading.Thread(target=keep_forwarding, name="coscope-hand-back", daemon=True).start()
