"""Issue 23 item 9: without a working podman the container tests skip with the reason, or fail where
COSCOPE_REQUIRE_CONTAINERS=1 (.ci/run), instead of skipping silently there. No podman needed."""

from __future__ import annotations

import pytest

from tests.containers.conftest import skip_or_fail

REASON = "podman does not work here: cannot find runc"


def test_an_unusable_podman_skips_the_container_tests_with_its_reason():
    with pytest.raises(pytest.skip.Exception, match=REASON):
        skip_or_fail(REASON, env={})


@pytest.mark.parametrize("value", ["0", ""])
def test_only_the_value_1_requires_containers(value):
    with pytest.raises(pytest.skip.Exception):
        skip_or_fail(REASON, env={"COSCOPE_REQUIRE_CONTAINERS": value})


def test_where_containers_are_required_an_unusable_podman_fails_them():
    with pytest.raises(pytest.fail.Exception, match=f"COSCOPE_REQUIRE_CONTAINERS=1, but {REASON}"):
        skip_or_fail(REASON, env={"COSCOPE_REQUIRE_CONTAINERS": "1"})
