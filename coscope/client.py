"""A small synchronous client for the coscope HTTP API (``/v1/jobs``).

Errors form one tree, in the style of ``httpx/_exceptions.py``::

    ClientError            every failure; .status_code and .detail are None unless the server answered
    └── ServerUnreachable  connection refused, DNS failure, timeout (no HTTP response at all)

The event stream (``GET /v1/jobs/{id}/events``, ``text/event-stream``) is parsed here rather than with an
SSE library, and resumed with ``Last-Event-ID`` after a dropped connection.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from store.status import FINISHED_STATES, SWEEP_FINISHED_STATES

JSON = dict[str, Any]
Rows = list[JSON]  # module-level alias: inside the class, ``list`` is the method

DEFAULT_SERVER = "http://127.0.0.1:8000"
TERMINAL_STATUSES = frozenset(FINISHED_STATES)
RETRYABLE_STATUS_CODES = frozenset({502, 503, 504})  # a proxy or a restarting server, while following events


class ClientError(Exception):
    """A failed call. ``status_code``/``detail`` come from the server's response when there was one."""

    def __init__(self, message: str, *, status_code: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


class ServerUnreachable(ClientError):
    """No HTTP response: the server is down, the address is wrong, or the network timed out."""

    def __init__(self, server: str, cause: Exception) -> None:
        super().__init__(f"cannot reach {server}: {cause}")
        self.server = server


@dataclass(frozen=True)
class Event:
    """One server-sent event; ``id`` is the resume position (``Last-Event-ID``)."""

    id: int
    type: str
    data: JSON


def _error_from(response: httpx.Response) -> ClientError:
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if detail is None:
        detail = response.text.strip() or None
    shown = detail if isinstance(detail, str) else json.dumps(detail)
    message = f"{response.status_code} {response.reason_phrase}"
    if detail is not None:
        message += f": {shown}"
    return ClientError(message, status_code=response.status_code, detail=detail)


def _path(*parts: str, root: str = "/v1/jobs/") -> str:
    return root + "/".join(quote(part, safe="") for part in parts)


def _sweep_path(*parts: str) -> str:
    return _path(*parts, root="/v1/sweeps/")


class CoscopeClient:
    """``CoscopeClient(server, key)``; pass ``transport=httpx.MockTransport(handler)`` in tests.

    ``stream_retries`` reconnects are allowed in a row while following events (the count resets as soon as
    the stream delivers anything), waiting ``backoff * 2**n`` seconds (at most 10 s) before each.
    """

    def __init__(self, server: str, key: str, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None, stream_retries: int = 5,
                 backoff: float = 0.5) -> None:
        self.server = server.rstrip("/")
        self.stream_retries, self.backoff = stream_retries, backoff
        self._http = httpx.Client(base_url=self.server, timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {key}",
                                           "User-Agent": "coscope-client"})

    def __enter__(self) -> CoscopeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ---- Plumbing ------------------------------------------------------------------------------
    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TransportError as error:
            raise ServerUnreachable(self.server, error) from error
        if not response.is_success:
            raise _error_from(response)
        return response

    def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        return self._request(method, url, **kwargs).json()

    # ---- Jobs ----------------------------------------------------------------------------------
    def submit(self, spec: JSON, *, name: str | None = None, tags: Iterable[str] = (), priority: int = 0,
               queue: str | None = None, idempotency_key: str | None = None) -> JSON:
        """Create a job (201), or get the job an earlier call with the same ``idempotency_key`` made (200)."""
        body = {"spec": spec, "name": name, "tags": list(tags), "priority": priority, "queue": queue}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        result: JSON = self._json("POST", "/v1/jobs", json=body, headers=headers)
        return result

    def get(self, job_id: str) -> JSON:
        result: JSON = self._json("GET", _path(job_id))
        return result

    def cancel(self, job_id: str) -> JSON:
        """Ask for a cancel (202); a finished job gives ``ClientError`` with status 409."""
        result: JSON = self._json("POST", _path(job_id, "cancel"))
        return result

    def report(self, job_id: str) -> JSON:
        """The run's report; ``ClientError`` 404 until the job has succeeded."""
        result: JSON = self._json("GET", _path(job_id, "report"))
        return result

    def metrics(self, job_id: str, kind: str | None = None) -> Rows:
        params = {"kind": kind} if kind else {}
        rows: Rows = self._json("GET", _path(job_id, "metrics"), params=params)["data"]
        return rows

    def artifacts(self, job_id: str) -> Rows:
        rows: Rows = self._json("GET", _path(job_id, "artifacts"))["data"]
        return rows

    def download(self, job_id: str, name: str, dest: Path) -> Path:
        """Stream an artifact to ``dest`` (``dest/name`` if it is a folder), never leaving a partial file."""
        return self._download(_path(job_id, "artifacts", name), name, dest)

    def _download(self, url: str, name: str, dest: Path) -> Path:
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / Path(name).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(handle, "wb") as file:
                try:
                    with self._http.stream("GET", url) as response:
                        if not response.is_success:
                            response.read()
                            raise _error_from(response)
                        for chunk in response.iter_bytes():
                            file.write(chunk)
                except httpx.TransportError as error:
                    raise ServerUnreachable(self.server, error) from error
            os.replace(partial, dest)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
        return dest

    # ---- Events --------------------------------------------------------------------------------
    def events(self, job_id: str, last_event_id: int | None = None) -> Iterator[Event]:
        """Follow a job's events until the server ends the stream (after the terminal status event)."""
        return self._follow(_path(job_id, "events"), last_event_id)

    def _follow(self, url: str, last_event_id: int | None) -> Generator[Event, None, None]:
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_event_id is not None:
                headers["Last-Event-ID"] = str(last_event_id)
            try:
                with self._http.stream("GET", url, headers=headers) as response:
                    if response.status_code in RETRYABLE_STATUS_CODES and failures < self.stream_retries:
                        raise _Retry
                    if not response.is_success:
                        response.read()
                        raise _error_from(response)
                    for item in parse_sse(response.iter_lines(), last_event_id):
                        failures = 0  # anything received, even a keep-alive, proves the link works
                        if isinstance(item, Event):
                            last_event_id = item.id
                            yield item
                return  # the server closed the stream normally
            except (httpx.TransportError, _Retry) as error:
                failures += 1
                if failures > self.stream_retries:
                    if isinstance(error, httpx.TransportError):
                        raise ServerUnreachable(self.server, error) from error
                    raise ClientError(f"event stream {url} kept failing") from error
                time.sleep(min(self.backoff * 2 ** (failures - 1), 10.0))

    def wait(self, job_id: str, on_event: Callable[[Event], None] | None = None) -> JSON:
        """Follow events (calling ``on_event`` for each) until a terminal status, then return the job."""
        last_event_id: int | None = None
        while True:
            stream = self._follow(_path(job_id, "events"), last_event_id)
            try:
                for event in stream:
                    last_event_id = event.id
                    if on_event is not None:
                        on_event(event)
                    if event.type == "status" and event.data.get("status") in TERMINAL_STATUSES:
                        return self.get(job_id)
            finally:
                stream.close()
            # The stream ended without a terminal event (an idle proxy closing it, say): check, then resume.
            job = self.get(job_id)
            if job["status"] in TERMINAL_STATUSES:
                return job
            time.sleep(self.backoff)

    # ---- Sweeps --------------------------------------------------------------------------------
    def submit_sweep(self, spec: JSON, grid: dict[str, list[Any]], *, seeds: Iterable[int] | None = None,
                     name: str | None = None, tags: Iterable[str] = (), priority: int = 0,
                     queue: str | None = None, callback_url: str | None = None,
                     idempotency_key: str | None = None) -> JSON:
        """Create a sweep: ``spec`` for every combination of the ``grid`` axes (dotted spec paths), per seed."""
        body = {"spec": spec, "grid": grid, "seeds": list(seeds) if seeds is not None else None, "name": name,
                "tags": list(tags), "priority": priority, "queue": queue, "callback_url": callback_url}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        result: JSON = self._json("POST", "/v1/sweeps", json=body, headers=headers)
        return result

    def sweep(self, sweep_id: str) -> JSON:
        result: JSON = self._json("GET", _sweep_path(sweep_id))
        return result

    def sweeps(self, limit: int = 50, offset: int = 0) -> JSON:
        result: JSON = self._json("GET", "/v1/sweeps", params={"limit": limit, "offset": offset})
        return result

    def cancel_sweep(self, sweep_id: str) -> JSON:
        result: JSON = self._json("POST", _sweep_path(sweep_id, "cancel"))
        return result

    def sweep_events(self, sweep_id: str, last_event_id: int | None = None) -> Iterator[Event]:
        """``child_finished`` and ``child_co_onset`` events, then ``sweep_finished`` (the stream ends)."""
        return self._follow(_sweep_path(sweep_id, "events"), last_event_id)

    def wait_sweep(self, sweep_id: str, on_event: Callable[[Event], None] | None = None) -> JSON:
        """Follow the sweep's events (calling ``on_event``) until it finished, then return the sweep."""
        last_event_id: int | None = None
        while True:
            for event in self.sweep_events(sweep_id, last_event_id):
                last_event_id = event.id
                if on_event is not None:
                    on_event(event)
            sweep = self.sweep(sweep_id)  # the stream ends at sweep_finished, or a proxy cut it: check
            if sweep["status"] in SWEEP_FINISHED_STATES:
                return sweep
            time.sleep(self.backoff)

    def download_sweep(self, sweep_id: str, name: str, dest: Path) -> Path:
        """``heatmap.svg``, ``table.csv`` or ``table.json`` of a sweep, like ``download``."""
        return self._download(_sweep_path(sweep_id, "artifacts", name), name, dest)

    def changes(self, cursor: str = "0", *, page: int = 200) -> Iterator[JSON]:
        """Every job changed after ``cursor`` (``"0"``: every job), oldest change first, page after page until
        the feed is drained. Each job carries its ``change_cursor``: keep the last one seen and call again to
        poll; unlike a time window, no change is skipped however late it commits."""
        while True:
            jobs = self.list(changed_after=cursor, limit=page)["data"]
            yield from jobs
            if len(jobs) < page:
                return
            cursor = jobs[-1]["change_cursor"]

    # ``list`` last: in the class body it shadows the builtin for everything defined after it.
    def list(self, status: str | None = None, tag: str | None = None, limit: int = 50,
             offset: int = 0, changed_after: str | None = None) -> JSON:
        """``{"data": [job, ...], "count": total}``, newest first (the server's order); with ``changed_after``
        (a job's ``change_cursor``) the jobs changed since, oldest change first (``changes`` pages them)."""
        params: dict[str, str | int] = {"limit": limit, "offset": offset}
        optional = {"status": status, "tag": tag, "changed_after": changed_after}
        params.update({name: value for name, value in optional.items() if value})
        result: JSON = self._json("GET", "/v1/jobs", params=params)
        return result


class _Retry(Exception):
    """A retryable HTTP status while following events."""


class _KeepAlive:
    """A comment line (``: ping``): no event, but proof that the connection is alive."""


KEEP_ALIVE = _KeepAlive()


def parse_sse(lines: Iterable[str], last_event_id: int | None = None) -> Iterator[Event | _KeepAlive]:
    """Turn ``text/event-stream`` lines into events (WHATWG rules: ``field: value``, blank line dispatches).

    ``data`` lines are joined with newlines and decoded as JSON; an event without ``id`` keeps the last id.
    An event cut off by the end of the stream (no blank line) is dropped, as the standard requires.
    """
    event_type, event_id = "message", last_event_id
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                try:
                    payload = json.loads("\n".join(data))
                except ValueError as error:
                    raise ClientError(f"malformed event data: {error}") from error
                yield Event(id=event_id if event_id is not None else 0, type=event_type,
                            data=payload if isinstance(payload, dict) else {"value": payload})
            event_type, data = "message", []
            continue
        if line.startswith(":"):
            yield KEEP_ALIVE
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "event":
            event_type = value
        elif field == "id" and value.strip().isdigit():
            event_id = int(value)
        # "retry" and unknown fields are ignored; our backoff is the client's own.


# ---- Connection settings -------------------------------------------------------------------------
def coscope_home() -> Path:
    return Path(os.environ.get("COSCOPE_HOME") or Path.home() / ".coscope").expanduser()


def _client_config(home: Path) -> JSON:
    path = home / "client.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise ClientError(f"cannot read {path}: {error}") from error
    if not isinstance(config, dict):
        raise ClientError(f"{path} must hold a JSON object like {{\"server\": ..., \"key\": ...}}")
    return config


def resolve_connection(server: str | None, key: str | None) -> tuple[str, str]:
    """Server and API key: argument, else ``COSCOPE_SERVER``/``COSCOPE_API_KEY``, else
    ``$COSCOPE_HOME/client.json``, else the default server / the embedded server's
    ``$COSCOPE_HOME/api-key``."""
    home = coscope_home()
    config: JSON | None = None
    if not server:
        server = os.environ.get("COSCOPE_SERVER")
    if not server:
        config = _client_config(home)
        server = config.get("server") or DEFAULT_SERVER
    if not key:
        key = os.environ.get("COSCOPE_API_KEY")
    if not key:
        config = _client_config(home) if config is None else config
        key = config.get("key")
    if not key:
        try:
            key = (home / "api-key").read_text().strip()
        except FileNotFoundError:
            key = None
        except OSError as error:
            raise ClientError(f"cannot read {home / 'api-key'}: {error}") from error
    if not key:
        raise ClientError(f"no API key: pass --key, set COSCOPE_API_KEY, or write {{\"key\": ...}} to "
                          f"{home / 'client.json'} (a local `coscope serve` writes {home / 'api-key'})")
    return str(server).rstrip("/"), str(key)
