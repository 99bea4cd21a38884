"""Property-based fuzzing of every operation in the app's own OpenAPI schema (schemathesis, in process):
whatever the generated input, valid or not, no response is a 5xx. Authenticated as an admin, so admin
routes are reached too (negative cases also mangle the Authorization header); DNS is the fake resolver
(conftest), the broker the embedded SQLite one. About 25 examples per operation, ~10 s."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, strategies
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from api.main import create_app
from store.settings import Settings
from tests.api.utils import key_headers

EXAMPLES_PER_OPERATION = 25


@pytest.mark.fuzz
def test_no_operation_answers_with_a_server_error(tmp_path):
    settings = Settings(home=tmp_path, team_submits_per_minute=100_000, team_max_active_jobs=100_000)
    app = create_app(settings, reconcile=False)
    with TestClient(app):  # runs the lifespan: tables exist before the first generated request
        headers = key_headers(settings, role="admin")
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 15
        for operation in operations:
            cases = strategies.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                                      operation.as_strategy(GenerationMode.NEGATIVE))

            @given(case=cases)
            @hypothesis_settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                                 derandomize=True, suppress_health_check=list(HealthCheck))
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(headers=headers, checks=[not_a_server_error])

            check()
