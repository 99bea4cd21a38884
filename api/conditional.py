"""ETag / If-None-Match on reports and artifacts: a platform that polls them gets ``304 Not Modified`` (no body)
until they change. Bodies built per request are tagged by their bytes; files by their size and mtime."""

from __future__ import annotations

import hashlib
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


def conditional(request: Request, content: bytes, media_type: str,
                headers: dict[str, str] | None = None) -> Response:
    etag = _tag(content)
    headers = {**(headers or {}), "ETag": etag, "Cache-Control": "no-cache"}  # revalidate, never guess
    if _matches(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(content, media_type=media_type, headers=headers)


def conditional_file(request: Request, path: Path, filename: str) -> Response:
    stat = path.stat()
    etag = _tag(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if _matches(request, etag):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, filename=filename, headers=headers)
