"""The job store: what the API and the worker share, and nothing either owns alone.

``settings`` (one ``Settings`` per process, from ``COSCOPE_*``), ``models`` (the tables), ``db`` (engines and
sessions), ``crud`` (every read and write of the store, the worker's fenced writes included), ``retention``
(checkpoints of long-finished jobs deleted, and an admin's delete of a finished job), ``webhooks``
(callback-URL checks and signed delivery, sent by the API, the reconciler and the worker) and ``broker`` (the
Celery configuration and the task name, which the API publishes to and the worker consumes).

Layers run one way: ``core`` <- ``store`` <- {``api``, ``worker``} <- ``coscope``. The store imports neither
``api`` nor ``worker`` (not even lazily), and no torch; ``tests/test_layers.py`` checks it.

Commits: one unit of work is one ``db.session_scope`` block, and it commits when the block exits (it rolls
back when the block raises). Nothing else commits: ``crud`` functions add, flush and execute, never commit,
and callers never call ``session.commit()`` themselves; the commit numbers the block's job changes first
(``db.stamp_changes``: the change order that pollers follow). In the API the request's session is such a block
around the route function (``api.deps.SessionDep``, a dependency of scope ``function``), so it commits
before the response is sent: a client never sees a write that is not durable. A side effect that must
follow the commit (publishing a job, sending a webhook) runs as a background task, after it.
"""
