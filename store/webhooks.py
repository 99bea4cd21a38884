"""Webhooks: signed JSON POSTs when a job finishes or shows CO onset, guarded against SSRF (OWASP API7).

A ``callback_url`` must use http or https, carry no credentials, use port 80, 443 or 1024-65535, and its
host must resolve only to public addresses: loopback, private (10/8, 172.16/12, 192.168/16), shared
(100.64/10), link-local (169.254/16, the cloud metadata address included), multicast, reserved and
unspecified addresses are refused, in IPv6 too (::1, fc00::/7, fe80::/10), and IPv4 addresses embedded in
IPv6 (::ffff:a.b.c.d, 6to4, NAT64) are checked as IPv4. Integer, hex, octal and short IPv4 forms
(``0x7f000001``, ``2130706433``, ``127.1``) are refused outright. The check runs at submit (422) and again
before every try (DNS rebinding), and the request goes to the address just checked (the Host header and
TLS SNI keep the name), so the name cannot be re-resolved elsewhere between check and connect.

Delivery: body ``{"event", "job_id", "status", "co"}`` (sweeps: ``sweep.finished`` with ``sweep_id``),
header ``X-Coscope-Signature: sha256=<hex>`` (HMAC-SHA256 of the raw body with ``COSCOPE_WEBHOOK_SECRET``),
no redirects, no proxies from the environment, a 5 s timeout, 3 tries with exponential backoff on network
errors, 5xx, 408 and 429. The callee's body is never read; a ``webhook`` job event records the outcome and
status code only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import update

from store import crud
from store.db import session_scope
from store.models import Job, Sweep
from store.settings import Settings
from store.sweeps import child_counts

log = logging.getLogger("coscope.webhooks")
SIGNATURE_HEADER = "X-Coscope-Signature"
TRIES = 3
TIMEOUT_SECONDS = 5.0
BACKOFF_SECONDS = 0.5  # waits 0.5 s, then 1 s
RETRY_STATUSES = {408, 429}
NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$", re.IGNORECASE)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
TRANSPORT: httpx.BaseTransport | None = None  # test seam: an httpx.MockTransport for the worker's calls

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeURL(ValueError):
    """The callback URL is not allowed (the message says why, without naming resolved addresses)."""


@dataclass(frozen=True)
class Delivery:
    outcome: str  # delivered | failed | refused
    status_code: int | None
    tries: int


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (tests replace this function)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def forbidden(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if address in NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and forbidden(embedded):
            return True
    return (not address.is_global or address.is_private or address.is_loopback or address.is_link_local
            or address.is_multicast or address.is_reserved or address.is_unspecified)


def check_url(url: str) -> tuple[httpx.URL, list[str]]:
    """The parsed URL and the addresses of its host, all public; ``UnsafeURL`` otherwise."""
    try:
        parsed = httpx.URL(url)
    except Exception as error:
        raise UnsafeURL("is not a valid URL") from error
    if parsed.scheme not in ("http", "https"):
        raise UnsafeURL("must use http or https")
    if parsed.userinfo:
        raise UnsafeURL("must not contain credentials")
    host = parsed.host.rstrip(".")
    if not host:
        raise UnsafeURL("has no host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not (port in (80, 443) or 1024 <= port <= 65535):
        raise UnsafeURL("must use port 80, 443 or 1024-65535")
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        if NUMERIC_HOST.match(host):
            raise UnsafeURL("uses a non-standard IP address form") from None
        try:
            addresses = resolve(host, port)
        except (OSError, UnicodeError):
            addresses = []
    try:
        if not addresses or any(forbidden(ipaddress.ip_address(a.split("%")[0])) for a in addresses):
            raise UnsafeURL("must resolve to public addresses only")
    except ValueError as error:
        raise UnsafeURL("must resolve to public addresses only") from error
    return parsed, addresses


def url_problems(url: str | None) -> list[dict[str, Any]]:
    if url is None:
        return []
    try:
        check_url(url)
    except UnsafeURL as error:
        return [{"loc": ["body", "callback_url"], "type": "unsafe_url", "msg": f"callback_url {error}"}]
    return []


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def deliver(url: str, payload: dict[str, Any], secret: str, *, transport: httpx.BaseTransport | None = None,
            sleep: Callable[[float], None] = time.sleep) -> Delivery:
    """POST ``payload`` to ``url``, checking the URL again before each try."""
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "coscope-webhook/1",
               SIGNATURE_HEADER: sign(body, secret), "X-Coscope-Event": str(payload.get("event"))}
    status_code: int | None = None
    with httpx.Client(transport=transport, follow_redirects=False, timeout=TIMEOUT_SECONDS,
                      trust_env=False) as client:
        for attempt in range(1, TRIES + 1):
            try:
                parsed, addresses = check_url(url)
            except UnsafeURL as error:
                log.warning("webhook to %s refused at send time: %s", url, error)
                return Delivery("refused", None, attempt - 1)
            pinned = parsed.copy_with(host=addresses[0])  # connect to the address that was checked
            extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
            try:
                with client.stream("POST", pinned, content=body, extensions=extensions,
                                   headers={**headers, "Host": parsed.netloc.decode("ascii")}) as response:
                    status_code = response.status_code  # the body is never read
            except httpx.HTTPError as error:
                status_code = None
                log.info("webhook to %s, try %d: %s", url, attempt, type(error).__name__)
            if status_code is not None and status_code < 300:
                return Delivery("delivered", status_code, attempt)
            if status_code is not None and status_code < 500 and status_code not in RETRY_STATUSES:
                return Delivery("failed", status_code, attempt)  # redirects and client errors are final
            if attempt < TRIES:
                sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
    return Delivery("failed", status_code, TRIES)


def notify(settings: Settings, job_id: str, event: str | None = None, *,
           transport: httpx.BaseTransport | None = None,
           sleep: Callable[[float], None] = time.sleep) -> Delivery | None:
    """Send ``event`` (default ``job.<status>``) for the job if it has a callback URL, and record the
    outcome as a job event. Never raises: a webhook must not fail a job's own bookkeeping."""
    try:
        with session_scope(settings.database) as session:
            job = session.get(Job, job_id)
            if job is None or not job.callback_url:
                return None
            url, attempt, event = job.callback_url, job.attempt, event or f"job.{job.status}"
            payload = {"event": event, "job_id": job.id, "status": job.status, "co": job.co}
        result = deliver(url, payload, settings.webhook_secret, transport=transport or TRANSPORT, sleep=sleep)
        with session_scope(settings.database) as session:
            crud.add_event(session, job_id, attempt, "webhook", {"event": event, "outcome": result.outcome,
                                                                 "status_code": result.status_code,
                                                                 "tries": result.tries})
        return result
    except Exception:
        log.exception("webhook %s for job %s failed", event, job_id)
        return None


def notify_sweep(settings: Settings, sweep_id: str, *, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> Delivery | None:
    """Send ``sweep.finished`` (body ``{"event", "sweep_id", "status", "counts"}``) if the sweep has a callback
    URL, and record the outcome on the sweep (``webhook``). Never raises."""
    try:
        with session_scope(settings.database) as session:
            sweep = session.get(Sweep, sweep_id)
            if sweep is None or not sweep.callback_url:
                return None
            url = sweep.callback_url
            payload = {"event": "sweep.finished", "sweep_id": sweep.id, "status": sweep.status,
                       "counts": child_counts(session, [sweep.id])[sweep.id]}
        result = deliver(url, payload, settings.webhook_secret, transport=transport or TRANSPORT, sleep=sleep)
        with session_scope(settings.database) as session:
            session.execute(update(Sweep).where(Sweep.id == sweep_id).values(webhook={
                "event": "sweep.finished", "outcome": result.outcome, "status_code": result.status_code,
                "tries": result.tries}))
        return result
    except Exception:
        log.exception("webhook sweep.finished for sweep %s failed", sweep_id)
        return None


def notify_in_background(settings: Settings, job_id: str, event: str | None = None) -> threading.Thread:
    """``notify`` on a short-lived thread, for events sent while training goes on."""
    thread = threading.Thread(target=notify, args=(settings, job_id, event), name=f"webhook-{job_id}",
                              daemon=True)
    thread.start()
    return thread
