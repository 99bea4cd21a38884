"""Unit tests of the limits: the cost estimate, the per-team token bucket, the body-size middleware."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from api.limits import (
    AUTOATTACK_PASSES,
    BodySizeLimit,
    RateLimiter,
    attack_passes,
    budget_problems,
    estimate_cost,
    model_factor,
)
from api.settings import Settings
from core.spec import JobSpec, load_spec_file

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").rglob("*.yaml"))


def test_the_papers_fgsm_run_costs_about_nine_million_image_passes():
    spec = JobSpec()  # defaults are the paper's: CIFAR-10, width 64, FGSM, 30 epochs, PGD-50-10
    train = 30 * 50_000 * 2
    evaluation = 10_000 + 10_000 * 10 * 51
    assert train + evaluation < estimate_cost(spec) < 1.2 * (train + evaluation)  # plus the CO monitor


@pytest.mark.parametrize(("method", "passes"), [("standard", 1), ("fgsm", 2), ("rs_fgsm", 2), ("n_fgsm", 2),
                                                ("grad_align", 4), ("pgd", 8)])
def test_attack_passes_per_method(method, passes):
    spec = JobSpec.model_validate({"training": {"method": method, "pgd_steps": 7}})
    assert attack_passes(spec) == passes


def test_model_factor_scales_with_width_squared():
    assert model_factor(JobSpec()) == 1.0
    assert model_factor(JobSpec.model_validate({"model": {"width": 16}})) == 1 / 16
    assert model_factor(JobSpec.model_validate({"model": {"arch": "small_cnn"}})) == 0.05


def test_subsets_and_dataset_sizes_drive_the_cost():
    full = estimate_cost(JobSpec.model_validate({"dataset": {"name": "svhn"}, "monitor": {"enabled": False}}))
    subset = estimate_cost(JobSpec.model_validate({"dataset": {"name": "svhn", "train_subset": 7_325_700},
                                                   "monitor": {"enabled": False}}))
    assert full == subset  # a subset larger than the dataset costs the dataset
    small = JobSpec.model_validate({"dataset": {"name": "synthetic", "synthetic_train_size": 100,
                                                "synthetic_test_size": 10},
                                    "training": {"epochs": 2, "method": "standard"},
                                    "evaluation": {"restarts": 1, "pgd_steps": 1},
                                    "monitor": {"enabled": False}})
    assert estimate_cost(small) == 2 * 100 * 1 + 10 + 10 * 1 * 2


def test_max_steps_caps_the_training_cost():
    sections = {"dataset": {"name": "synthetic", "synthetic_train_size": 1000, "synthetic_test_size": 10},
                "evaluation": {"restarts": 1, "pgd_steps": 1}, "monitor": {"enabled": False}}
    capped = JobSpec.model_validate({**sections, "training": {"epochs": 3, "batch_size": 100, "max_steps": 2}})
    loose = JobSpec.model_validate({**sections, "training": {"epochs": 3, "batch_size": 100, "max_steps": 99}})
    evaluation = 10 + 10 * 1 * 2
    assert estimate_cost(capped) == 2 * 100 * 2 + evaluation  # 2 steps of 100 images, 2 passes each
    assert estimate_cost(loose) == 3 * 1000 * 2 + evaluation  # the cap is above the 30 planned steps


def test_a_monitor_checking_every_step_costs_more():
    monitor = {"every_steps": 1, "train_images": 100_000, "pgd_steps": 1000}
    often = JobSpec.model_validate({"monitor": monitor})
    assert budget_problems(often, Settings().team_budget)[0]["type"] == "budget_exceeded"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.stem)
def test_every_example_fits_the_default_budget(path):
    assert estimate_cost(load_spec_file(str(path))) <= Settings().team_budget


# ---- rate limiter -----------------------------------------------------------------------------------


def test_token_bucket_refills_per_team():
    now = [0.0]
    limiter = RateLimiter(per_minute=2, clock=lambda: now[0])
    assert [limiter.acquire("a"), limiter.acquire("a")] == [0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(30.0)  # one token every 30 s
    assert limiter.acquire("b") == 0.0  # another team has its own bucket
    now[0] = 15.0
    assert limiter.acquire("a") == pytest.approx(15.0)
    now[0] = 30.0
    assert limiter.acquire("a") == 0.0
    now[0] = 10_000.0
    assert [limiter.acquire("a") for _ in range(3)][2] > 0  # the bucket holds at most per_minute tokens


# ---- body size --------------------------------------------------------------------------------------


class Recorder:
    """An ASGI app that reads the whole body and answers 200, and the messages it and the middleware sent."""

    def __init__(self) -> None:
        self.read = 0
        self.sent: list[dict] = []

    async def app(self, scope, receive, send):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RuntimeError("client went away")  # what a framework does on a disconnect
            self.read += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(self, message):
        self.sent.append(message)


def _run(limit: int, chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> tuple[Recorder, int]:
    recorder, pulled = Recorder(), 0

    async def receive():
        nonlocal pulled
        pulled += 1
        if pulled > len(chunks):
            raise AssertionError("read past the end")
        return {"type": "http.request", "body": chunks[pulled - 1], "more_body": pulled < len(chunks)}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    asyncio.run(BodySizeLimit(recorder.app, max_bytes=limit)(scope, receive, recorder.send))
    return recorder, pulled


def test_a_declared_length_over_the_limit_is_refused_unread():
    recorder, pulled = _run(1024, [b"x" * 2048], [(b"content-length", b"2048")])
    assert pulled == 0 and recorder.read == 0
    assert recorder.sent[0]["status"] == 413 and b"too large" in recorder.sent[1]["body"]


def test_a_malformed_content_length_is_refused():
    recorder, pulled = _run(1024, [b"x"], [(b"content-length", b"-1")])
    assert pulled == 0 and recorder.sent[0]["status"] == 413


def test_a_chunked_body_is_cut_off_at_the_limit():
    chunks = [b"x" * 100] * 1000  # 100 kB in 1000 chunks, the limit is 1 kB
    recorder, pulled = _run(1024, chunks, [(b"transfer-encoding", b"chunked")])
    assert pulled == 11  # stopped at the first chunk past the limit, the rest never read
    assert [message.get("status") for message in recorder.sent] == [413, None]  # the app's own reply dropped


def test_a_body_lying_about_its_length_is_cut_off_too():
    recorder, pulled = _run(1024, [b"x" * 600] * 10, [(b"content-length", b"100")])
    assert pulled == 2 and recorder.sent[0]["status"] == 413


def test_a_body_at_the_limit_passes():
    recorder, pulled = _run(1024, [b"x" * 512, b"x" * 512], [])
    assert (pulled, recorder.read) == (2, 1024) and recorder.sent[0]["status"] == 200


def test_non_http_scopes_pass_through():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(BodySizeLimit(app, max_bytes=1)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]


def test_autoattack_adds_its_worst_case_per_attacked_image():
    sections = {"dataset": {"name": "synthetic", "synthetic_train_size": 100, "synthetic_test_size": 10},
                "training": {"epochs": 1, "method": "standard"}, "monitor": {"enabled": False}}
    off = estimate_cost(JobSpec.model_validate({**sections, "evaluation": {"test_subset": 4}}))
    on = estimate_cost(JobSpec.model_validate({**sections,
                                               "evaluation": {"test_subset": 4, "autoattack": "standard"}}))
    assert on - off == 4 * AUTOATTACK_PASSES * model_factor(JobSpec.model_validate(sections))
