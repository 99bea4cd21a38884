"""Path safety: contained joins for artifacts, and API-side checks of client-supplied dataset paths.

``core.spec`` already refuses absolute ``dataset.path`` values and '..' segments; the API adds the forms
that are harmless on one platform and not on another (backslashes, drive letters, NUL, percent-encoding).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from core.spec import JobSpec
from store.settings import Settings

DRIVE = re.compile(r"^[A-Za-z]:")


def safe_join(root: str | os.PathLike[str], name: str) -> Path | None:
    """``root/name`` resolved, or None if it would leave ``root``.

    Both sides go through ``realpath`` (symlinks resolved) and containment is checked with
    ``commonpath``, which compares whole components: a sibling ``<root>-evil`` is outside, where a
    ``startswith``/``commonprefix`` check would let it in (CVE-2023-29159 in Starlette's StaticFiles).
    """
    if not name or "\x00" in name:
        return None
    base = os.path.realpath(root)
    full = os.path.realpath(os.path.join(base, name))
    try:
        if os.path.commonpath([full, base]) != base:
            return None
    except ValueError:  # different drives (Windows)
        return None
    return Path(full)


def dataset_path_problem(path: str) -> str | None:
    """Why ``path`` is not an acceptable relative dataset folder, or None."""
    decoded = path
    for _ in range(3):  # '%252e%252e' decodes twice to '..'
        decoded = unquote(decoded)
    for form in (path, decoded):
        if any(ord(char) < 32 for char in form):
            return "must not contain NUL or control characters"
        if "\\" in form:
            return "must use '/' separators, not backslashes"
        if form.startswith(("/", "~")) or DRIVE.match(form):
            return "must be relative to the data root"
        if ".." in form.split("/"):
            return "must not contain '..'"
    if decoded != path:
        return "must not be percent-encoded"
    return None


def spec_path_problems(spec: JobSpec) -> list[dict[str, Any]]:
    if spec.dataset.path is None:
        return []
    problem = dataset_path_problem(spec.dataset.path)
    if problem is None:
        return []
    return [{"loc": ["body", "spec", "dataset", "path"], "type": "unsafe_path",
             "msg": f"dataset.path {problem}"}]


def redact(message: str | None, settings: Settings) -> str | None:
    """Worker error messages name server paths (``expected an image folder at /srv/data/x``); clients see
    placeholders instead (OWASP API3/API8: no filesystem layout in responses)."""
    if not message:
        return message
    roots = {"<data root>": settings.datasets, "<artifacts>": settings.artifacts, "<home>": settings.home}
    pairs = [(form, label) for label, root in roots.items() for form in (str(root), os.path.realpath(root))]
    for root, label in sorted(pairs, key=lambda pair: -len(pair[0])):
        message = message.replace(root, label)
    return message
