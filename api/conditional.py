"""ETag / If-None-Match on reports and artifacts: a platform that polls them gets ``304 Not Modified`` (no
body) until they change. Bodies built per request are tagged by their bytes; files by their size and mtime."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from fastapi import Request, Response
from fastapi.responses import FileResponse


def _tag(material: bytes) -> str:
    return f'"{hashlib.sha256(material).hexdigest()[:32]}"'


def _matches(request: Request, etag: str) -> bool:
    """RFC 9110 If-None-Match: a list of tags (weak ones compare equal too) or ``*``."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or etag in tags


def _respond(request: Request, etag: str, send: Callable[[dict[str, str]], Response],
             headers: dict[str, str] | None = None) -> Response:
    """304 when the client holds ``etag``, else ``send(headers)``; both carry the tag (revalidate, never
    guess)."""
    headers = {**(headers or {}), "ETag": etag, "Cache-Control": "no-cache"}
    if _matches(request, etag):
        return Response(status_code=304, headers=headers)
    return send(headers)


def conditional(request: Request, content: bytes, media_type: str,
                headers: dict[str, str] | None = None) -> Response:
    return _respond(request, _tag(content),
                    lambda tagged: Response(content, media_type=media_type, headers=tagged), headers)


def conditional_file(request: Request, path: Path, filename: str) -> Response:
    stat = path.stat()
    return _respond(request, _tag(f"{stat.st_size}:{stat.st_mtime_ns}".encode()),
                    lambda tagged: FileResponse(path, filename=filename, headers=tagged))
