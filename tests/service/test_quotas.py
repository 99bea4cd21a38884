"""A team's active-job quota holds across API replicas (issue 23, item 2), with real processes: two
``coscope serve --no-worker`` on one store (SQLite, and PostgreSQL), each with its own sweep keeper, and many
concurrent submitters of one team near its quota. Without the team lock (``store.crud.lock_team``) both
replicas read the same count and both insert, and the team passes its quota.

No worker runs, so nothing leaves the active states but the tests' own cancels: the active count after each
burst is the most it reached during it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from coscope.harness import Stack, listening_port, wait_until
from tests.service.conftest import job_spec

QUOTA = 5
ROOM = 2  # free slots before each burst: the team sits just under its quota
SUBMITTERS = 12  # concurrent POST /v1/jobs per burst, split over the two replicas
ROUNDS = 6
REPLICA_ENV = {"COSCOPE_TEAM_MAX_ACTIVE_JOBS": str(QUOTA),
               "COSCOPE_TEAM_SUBMITS_PER_MINUTE": "100000",  # the rate limit is not under test
               "COSCOPE_SWEEP_MAX_WAITING": "1000",  # only the quota bounds releases
               "COSCOPE_SWEEP_RELEASE_SECONDS": "0.05"}  # both keepers release almost all the time
QUOTA_DETAIL = {"detail": f"The team already has {QUOTA} queued or running jobs"}


class Replicas:
    """Two API processes on one store, and a client of each for one team's key."""

    def __init__(self, stack: Stack, urls: list[str]) -> None:
        self.stack, self.urls = stack, urls

    def clients(self, key: str, count: int) -> list[httpx.Client]:
        """``count`` clients, alternating between the replicas, each with its connection already open."""
        clients = [httpx.Client(base_url=self.urls[index % len(self.urls)], timeout=60,
                                headers={"Authorization": f"Bearer {key}"}) for index in range(count)]
        for client in clients:
            assert client.get("/v1/me").status_code == 200
        return clients

    def member_key(self, team: str) -> str:
        result = self.stack.coscope("keys", "create", "--name", team, "--team", team)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def replicas(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    home = tmp_path_factory.mktemp(f"quotas-{request.param}") / "home"
    # distributed without a Redis DB: a PostgreSQL store of its own, the embedded broker (no worker consumes it)
    stack = Stack("embedded" if request.param == "sqlite" else "distributed", home, env=REPLICA_ENV,
                  redis_db=None)
    home.mkdir()
    try:
        stack.start_api(worker=False)
        second = stack.start_api(worker=False, log="api2.log")
        yield Replicas(stack, [stack.url, f"http://127.0.0.1:{listening_port(home / 'api2.log', second)}"])
    finally:
        stack.close()


def at_once(calls: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    """Run the calls in threads released together, so their requests reach the replicas at the same time."""
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], httpx.Response]) -> httpx.Response:
        start.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def queued(client: httpx.Client) -> list[str]:
    """The team's queued jobs (no worker runs: its active ones), read through the API."""
    body = client.get("/v1/jobs", params={"status": "queued", "limit": 200}).json()
    assert body["count"] == len(body["data"])
    return [job["id"] for job in body["data"]]


def submit(client: httpx.Client) -> Callable[[], httpx.Response]:
    return lambda: client.post("/v1/jobs", json={"spec": job_spec(epochs=1)})


def test_concurrent_submits_through_two_replicas_fill_the_quota_and_no_more(replicas):
    clients = replicas.clients(replicas.member_key("burst"), SUBMITTERS)
    for _ in range(QUOTA - ROOM):
        assert submit(clients[0])().status_code == 201
    for round_ in range(ROUNDS):
        responses = at_once([submit(client) for client in clients])
        accepted = [response.json()["id"] for response in responses if response.status_code == 201]
        refused = [response for response in responses if response.status_code != 201]
        assert len(accepted) == ROOM, f"round {round_}: {len(accepted)} accepted with room for {ROOM}"
        assert all(response.status_code == 429 and response.json() == QUOTA_DETAIL for response in refused)
        assert len(queued(clients[0])) == QUOTA
        for job_id in accepted:  # back to just under the quota
            assert clients[0].post(f"/v1/jobs/{job_id}/cancel").status_code == 202


def test_sweep_keepers_and_submits_through_two_replicas_never_pass_the_quota(replicas):
    """Both replicas' sweep keepers release a sweep's held children into each freed slot while submitters
    race them for it: whoever wins, the team never holds more than its quota."""
    clients = replicas.clients(replicas.member_key("sweeper"), SUBMITTERS)
    seeds = list(range(10))
    sweep = clients[0].post("/v1/sweeps", json={"spec": job_spec(epochs=1), "seeds": seeds,
                                                "grid": {"training.epsilon": [2, 4, 6, 8]}})
    assert sweep.status_code == 201, sweep.text
    assert len(queued(clients[0])) == QUOTA  # the submit itself released up to the quota
    for round_ in range(ROUNDS):
        freed = queued(clients[0])[:ROOM]
        cancels = [lambda job_id=job_id: clients[0].post(f"/v1/jobs/{job_id}/cancel") for job_id in freed]
        responses = at_once([*cancels, *(submit(client) for client in clients[1:])])
        assert [response.status_code for response in responses[:ROOM]] == [202] * ROOM
        wait_until(lambda: len(queued(clients[0])) >= QUOTA, 30, "the keepers to fill the freed slots")
        time.sleep(0.5)  # several more passes of both keepers
        active = len(queued(clients[0]))
        assert active == QUOTA, f"round {round_}: {active} active jobs, quota {QUOTA}"
    # and once with no submitter racing, so the keepers surely release (under load the submitters may win
    # every slot of the rounds above): two cancels, two children released, still at the quota
    for job_id in queued(clients[0])[:ROOM]:
        assert clients[0].post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    wait_until(lambda: len(queued(clients[0])) >= QUOTA, 30, "the keepers to fill the freed slots")
    time.sleep(0.5)
    assert len(queued(clients[0])) == QUOTA
    counts = clients[0].get(f"/v1/sweeps/{sweep.json()['id']}").json()["counts"]
    assert counts["held"] > 0 and sum(counts.values()) - counts["held"] > QUOTA  # the keepers released

