"""The published contract: the v1 HTTP API's OpenAPI document and the job spec's JSON Schema, committed as
``docs/openapi.json`` and ``docs/spec.schema.json`` for platforms to generate clients and validate specs from.
``coscope openapi --docs docs`` rewrites both; ``tests/api/test_contract.py`` fails when the app and the files
differ."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from core.spec import JobSpec
from store.settings import Settings

OPENAPI_FILE = "openapi.json"
SPEC_SCHEMA_FILE = "spec.schema.json"


def openapi_document() -> dict[str, Any]:
    from api.main import create_app

    settings = Settings(home=Path(tempfile.gettempdir()) / "coscope-contract")  # routes only: nothing opened
    return create_app(settings, reconcile=False).openapi()


def spec_schema() -> dict[str, Any]:
    """The JSON Schema of a job spec (the ``spec`` of ``POST /v1/jobs``): fields, units, bounds, defaults."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **JobSpec.model_json_schema()}


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_docs(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in ((OPENAPI_FILE, openapi_document()), (SPEC_SCHEMA_FILE, spec_schema())):
        (folder / name).write_text(dumps(document))
        written.append(folder / name)
    return written
