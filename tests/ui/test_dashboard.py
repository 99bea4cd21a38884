"""The dashboard in a real browser (headless chromium) against a real embedded ``coscope serve``: sign-in,
the job list, a running job's curves growing over SSE until it finishes, cancel, submit with inline 422
problems, user strings shown as text, the sweep page's heatmap, narrow screens; no CSP violation anywhere
(the ``page`` fixture)."""

from __future__ import annotations

import json
import time

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from coscope.harness import SLOWNESS
from tests.conftest import HAIR_TRIGGER_RESCUE
from tests.service.conftest import job_spec
from tests.ui.conftest import WAIT_SECONDS, non_blank_share

XSS = '<script>window.__xss = 1</script><img src="x" onerror="window.__xss = 2">'


def wait(driver, condition, timeout: float = WAIT_SECONDS):
    return WebDriverWait(driver, timeout, poll_frequency=0.2,
                         ignored_exceptions=(StaleElementReferenceException,)).until(condition)


def sign_in(driver, url: str, key: str, then: str = "/ui/jobs") -> None:
    """Signs in with the keyboard only (type the key, Enter), as a keyboard user would."""
    driver.get(f"{url}/ui/?next={then}")
    field = wait(driver, ec.element_to_be_clickable((By.ID, "api_key")))
    field.send_keys(key, Keys.ENTER)
    wait(driver, lambda d: d.current_url.split("?")[0].endswith(then.split("?")[0]))


def text_of(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def listed(driver, css: str, attribute: str) -> list[tuple[str | None, str]]:
    """(attribute, text) of every element matching ``css``, read in one script: the page re-renders its lists on
    every event, so element handles read one by one can go stale between the reads."""
    script = ("return Array.from(document.querySelectorAll(arguments[0]),"
              " (e) => [e.getAttribute(arguments[1]), (e.innerText ?? e.textContent).trim()]);")  # SVG: textContent
    return [tuple(pair) for pair in driver.execute_script(script, css, attribute)]


def cells_of(driver, row_css: str) -> list[str]:
    """The texts of a table row's cells, read in one script (the job list re-renders while a job runs)."""
    return [text for _, text in listed(driver, f"{row_css} > td", "class")]


def listed_ids(driver) -> list[str]:
    return [job_id for job_id, _ in listed(driver, "#jobs tbody tr", "data-job-id")]


def points(driver) -> int:
    return int(driver.find_element(By.CSS_SELECTOR, "[data-testid=curves]").get_attribute("data-points"))


def expected_points(api, job_id: str) -> int:
    """The values the job page plots, counted from the API independently of the page's code: per row kind the
    fields of its panels that hold a number (linearity error only where positive: log scale)."""
    fields = {"train": ("train_loss", "train_clean_accuracy", "train_adv_accuracy"),
              "epoch": ("test_clean_accuracy",),
              "monitor": ("clean_accuracy", "fgsm_accuracy", "pgd_accuracy", "gradient_alignment",
                          "linearity_error")}
    total = 0
    for row in api.http.get(f"/v1/jobs/{job_id}/metrics").json()["data"]:
        for field in fields[row["kind"]]:
            value = row.get(field)
            if isinstance(value, int | float) and (field != "linearity_error" or value > 0):
                total += 1
    return total


@pytest.fixture(scope="module")
def finished_job(api) -> dict:
    job = api.submit(job_spec(epochs=2), name=XSS, tags=["ui", XSS])
    return api.wait_finished(job["id"])


def test_sign_in_refuses_a_wrong_key_and_keeps_the_right_one_in_session_storage_only(page, stack, member_key):
    page.get(f"{stack.url}/ui/jobs")  # not signed in: sent to the sign-in page
    wait(page, ec.url_contains("/ui/?next="))
    field = page.find_element(By.ID, "api_key")
    assert page.find_element(By.CSS_SELECTOR, "label[for=api_key]").text == "API key"
    field.send_keys("cs_not-a-key", Keys.ENTER)
    wait(page, lambda d: "not accepted" in text_of(d, "#signin-message"))
    assert page.execute_script("return sessionStorage.length") == 0
    field.clear()
    field.send_keys(member_key, Keys.ENTER)
    wait(page, ec.url_matches(r"/ui/jobs$"))  # back where the user was going
    wait(page, lambda d: "team lab" in text_of(d, "#whoami"))
    assert page.execute_script("return sessionStorage.getItem('coscope.apiKey')") == member_key
    assert page.get_cookies() == [] and member_key not in page.current_url
    assert page.execute_script("return localStorage.length") == 0
    page.find_element(By.ID, "sign-out").click()
    wait(page, ec.url_matches(r"/ui/$"))
    assert page.execute_script("return sessionStorage.length") == 0


def test_job_list_shows_a_finished_and_a_running_job_with_their_verdicts(page, stack, api, member_key,
                                                                        finished_job):
    running = api.submit(job_spec(epochs=20, train_size=512), name="ui-running", tags=["ui"])
    sign_in(page, stack.url, member_key)
    try:
        running_row = f"tr[data-job-id='{running['id']}'][data-status=running]"
        wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, running_row))
        cells = cells_of(page, f"tr[data-job-id='{finished_job['id']}']")
        assert cells[0] == XSS and cells[1] == "succeeded"
        verdict = {"co": f"CO at step {(finished_job['co'] or {}).get('onset_step')}",
                   "never_robust": "never robust", "no_co": "no CO"}[finished_job["co"]["verdict"]]
        assert cells[3] == verdict
        final = finished_job["final"]
        assert (cells[4], cells[5]) == (f"{100 * final['clean_accuracy']:.1f} %",
                                        f"{100 * final['robust_accuracy']:.1f} %")
        assert cells_of(page, f"tr[data-job-id='{running['id']}']")[3] == "pending"
        assert not page.find_element(By.CSS_SELECTOR, "th.admin-only").is_displayed()  # members: one team
        Select(page.find_element(By.ID, "filter-status")).select_by_visible_text("succeeded")
        page.find_element(By.ID, "filter-tag").send_keys("ui", Keys.ENTER)
        wait(page, ec.url_contains("status=succeeded"))
        wait(page, lambda d: listed_ids(d) == [finished_job["id"]])
    finally:
        api.wait_finished(running["id"], timeout=240)


def test_a_running_jobs_curves_grow_over_sse_until_it_finishes(page, stack, api, member_key, tmp_path):
    job = api.submit(job_spec(epochs=24, train_size=512), name="ui-live", tags=["ui"])
    api.events(job["id"], until="epoch")  # running, with its first epoch recorded
    sign_in(page, stack.url, member_key, then=f"/ui/jobs/{job['id']}")
    wait(page, lambda d: points(d) > 0)
    first = points(page)
    wait(page, lambda d: points(d) > first and api.job(job["id"])["status"] == "running")  # no reload: SSE
    wait(page, lambda d: text_of(d, "#job-status") == "succeeded", timeout=240 * SLOWNESS)
    finished = api.job(job["id"])
    wait(page, lambda d: text_of(d, "[data-testid=verdict]") == finished["co"]["verdict_text"])
    wait(page, lambda d: points(d) == expected_points(api, job["id"]))
    wait(page, lambda d: {"report.json", "metrics.jsonl", "curves.png"}
         <= {b.text for b in d.find_elements(By.CSS_SELECTOR, "#artifacts button")})
    assert not page.find_element(By.ID, "cancel").is_displayed()
    assert "PGD-2×1" in text_of(page, "#job-final")
    curves = page.find_element(By.CSS_SELECTOR, "[data-testid=curves]")
    page.execute_script("arguments[0].scrollIntoView()", curves)
    png = curves.screenshot_as_png
    (tmp_path / "job-page.png").write_bytes(page.get_screenshot_as_png())
    (tmp_path / "curves.png").write_bytes(png)
    assert non_blank_share(png) > 0.05  # axes, ticks, lines and legends drawn, not an empty region
    assert len(curves.find_elements(By.CSS_SELECTOR, "polyline")) >= 6


def test_a_rescued_jobs_page_shows_each_rescue_while_it_runs_and_after(page, stack, api, member_key):
    """Issue 24: a real rescue (HAIR_TRIGGER_RESCUE: synthetic data, a check every 2 steps) is listed in words
    under the verdict while the job still trains, each rescue is a green line on every panel next to the red
    onset line, and the job list's badge says the run was rescued."""
    spec = job_spec(epochs=40, train_size=128)  # 4 steps an epoch: the rescue comes within the first epochs
    spec["monitor"].update(HAIR_TRIGGER_RESCUE)
    job = api.submit(spec, name="ui-rescue", tags=["ui"])
    sign_in(page, stack.url, member_key, then=f"/ui/jobs/{job['id']}")
    rescue_items = "[data-testid=rescues] li"
    wait(page, lambda d: listed(d, rescue_items, "data-step"), timeout=240 * SLOWNESS)
    progress = api.job(job["id"])["progress"]
    assert progress["step"] < progress["total_steps"], progress  # shown while it trains
    final = api.wait_finished(job["id"], timeout=240 * SLOWNESS)
    rescues = final["co"]["rescue"]["rescues"]
    wait(page, lambda d: text_of(d, "#job-status") == "succeeded", timeout=60 * SLOWNESS)
    steps = [r["at_step"] for r in rescues]
    wait(page, lambda d: [int(step) for step, _ in listed(d, rescue_items, "data-step")] == steps)
    first, first_words = rescues[0], listed(page, rescue_items, "data-step")[0][1]
    assert first_words.startswith(f"Rescue 1 at step {first['at_step']} (onset at step {first['onset_step']}")
    assert f"weights of step {first['weights_from_step']}" in first_words and "N-FGSM" in first_words
    wait(page, lambda d: len(listed(d, "[data-testid=curves] line.rescue", "class")) == 4 * len(rescues))  # every panel
    assert len(listed(page, "[data-testid=curves] line.onset", "class")) == 4
    assert final["co"]["verdict"] == "co" and "was rescued" in text_of(page, "[data-testid=verdict]")
    page.get(f"{stack.url}/ui/jobs")
    row = f"tr[data-job-id='{job['id']}']"
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, row))
    assert cells_of(page, row)[3] == f"CO at step {final['co']['onset_step']}, rescued"


def test_cancel_a_waiting_job_from_its_page(page, stack, api, member_key):
    blocker = api.submit(job_spec(epochs=30, train_size=512), name="ui-blocker")
    waiting = api.submit(job_spec(epochs=2), name="ui-to-cancel")  # queued behind the blocker (one worker)
    try:
        sign_in(page, stack.url, member_key, then=f"/ui/jobs/{waiting['id']}")
        button = wait(page, ec.element_to_be_clickable((By.ID, "cancel")))
        assert text_of(page, "[data-testid=verdict]").startswith("Pending")
        button.click()
        wait(page, lambda d: text_of(d, "#job-status") == "cancelled")
        assert api.job(waiting["id"])["status"] == "cancelled"
        assert not page.find_element(By.ID, "cancel").is_displayed()
    finally:
        api.http.post(f"/v1/jobs/{blocker['id']}/cancel")
        api.wait_finished(blocker["id"])


def test_submit_lists_422_problems_by_field_and_submits_a_good_spec(page, stack, api, member_key):
    sign_in(page, stack.url, member_key, then="/ui/submit")
    spec = page.find_element(By.ID, "spec")
    spec.send_keys("training:\n  epsilon: -3\n  method: free\n")
    page.find_element(By.CSS_SELECTOR, "#submit button[type=submit]").click()
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#problems li"))
    items = page.find_elements(By.CSS_SELECTOR, "#problems li")
    fields = {item.get_attribute("data-field"): item.text for item in items}
    assert set(fields) == {"spec.training.epsilon", "spec.training.method"}
    assert "greater than or equal to 0" in fields["spec.training.epsilon"]
    assert spec.get_attribute("aria-invalid") == "true"
    spec.clear()
    spec.send_keys("training: [unclosed\n")
    page.find_element(By.CSS_SELECTOR, "#submit button[type=submit]").click()
    wait(page, lambda d: "not valid YAML or JSON" in text_of(d, "#problems"))
    before = api.http.get("/v1/jobs").json()["count"]
    spec.clear()
    spec.send_keys(json.dumps({"dataset": {"name": "synthetic"}, "training": {"epochs": 1}, XSS: 1}))
    page.find_element(By.CSS_SELECTOR, "#submit button[type=submit]").click()
    wait(page, lambda d: text_of(d, "#problems li code") == f"spec.{XSS}")  # the offending key, as text
    assert api.http.get("/v1/jobs").json()["count"] == before  # nothing stored
    spec.clear()
    spec.send_keys("dry_run: true\ndataset:\n  name: synthetic\ntraining:\n  epsilon: 8\n  epochs: 1\n")
    page.find_element(By.ID, "job-name-input").send_keys("from the form")
    page.find_element(By.ID, "job-tags-input").send_keys("ui, form")
    page.find_element(By.CSS_SELECTOR, "#submit button[type=submit]").click()
    wait(page, ec.url_matches(r"/ui/jobs/[0-9a-f-]{36}$"))
    job = api.job(page.current_url.rsplit("/", 1)[1])
    assert (job["name"], job["tags"], job["spec"]["dry_run"]) == ("from the form", ["ui", "form"], True)
    wait(page, lambda d: text_of(d, "#job-name") == "from the form")
    assert page.execute_script("return window.__xss") is None


def test_user_strings_are_shown_as_text_never_run(page, stack, member_key, finished_job):
    sign_in(page, stack.url, member_key, then=f"/ui/jobs/{finished_job['id']}")
    wait(page, lambda d: text_of(d, "#job-name") == XSS)
    assert [tag.text for tag in page.find_elements(By.CSS_SELECTOR, "#job-tags .tag")] == ["ui", XSS]
    assert page.title.startswith(XSS)
    page.get(f"{stack.url}/ui/jobs")
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, f"tr[data-job-id='{finished_job['id']}']"))
    time.sleep(0.5)  # an injected onerror handler would have run by now
    assert page.execute_script("return window.__xss") is None
    assert page.find_elements(By.CSS_SELECTOR, "main img[src='x'], main script") == []


def test_sweep_page_shows_the_heatmap_and_links_every_child(page, stack, api, admin_key, tmp_path):
    body = {"name": "ui sweep", "spec": job_spec(epochs=1), "grid": {"training.epsilon": [4, 8]},
            "seeds": [0]}
    created = api.http.post("/v1/sweeps", json=body)
    assert created.status_code == 201, created.text
    sweep = created.json()
    api.events_at(f"/v1/sweeps/{sweep['id']}/events", until="sweep_finished", timeout=240)
    sign_in(page, stack.url, admin_key, then="/ui/sweeps")  # an admin sees every team's sweeps
    link = wait(page, ec.element_to_be_clickable((By.CSS_SELECTOR, f"tr[data-sweep-id='{sweep['id']}'] a")))
    assert text_of(page, f"tr[data-sweep-id='{sweep['id']}'] td:nth-child(2)") == "succeeded"
    link.click()
    heatmap = wait(page, lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=heatmap]"))
    wait(page, lambda d: d.execute_script("return arguments[0].naturalWidth", heatmap) > 0)
    table = api.http.get(f"/v1/sweeps/{sweep['id']}").json()
    rows = page.find_elements(By.CSS_SELECTOR, "#cells tbody tr")
    assert [row.find_element(By.TAG_NAME, "td").text for row in rows] == ["4", "8"]
    linked = {a.get_attribute("data-job-id") for a in page.find_elements(By.CSS_SELECTOR, "#cells a.child")}
    assert linked == set(table["jobs"])
    for row, cell in zip(rows, table["cells"], strict=True):
        robust = cell["robust_accuracy"]["mean"]
        assert row.find_elements(By.TAG_NAME, "td")[2].text.startswith(f"{100 * robust:.1f} %")
    page.execute_script("arguments[0].scrollIntoView()", heatmap)
    png = heatmap.screenshot_as_png
    (tmp_path / "sweep-page.png").write_bytes(page.get_screenshot_as_png())
    assert non_blank_share(png) > 0.05
    assert not page.find_element(By.ID, "cancel").is_displayed()


@pytest.mark.parametrize("path", ["/ui/jobs", "/ui/submit", "/ui/sweeps", "job"])
def test_pages_fit_a_390px_screen(page, stack, member_key, finished_job, path):
    sign_in(page, stack.url, member_key)
    page.set_window_size(390, 844)
    page.get(stack.url + (f"/ui/jobs/{finished_job['id']}" if path == "job" else path))
    wait(page, lambda d: text_of(d, "#whoami"))
    time.sleep(0.3)
    assert page.execute_script("return document.documentElement.scrollWidth") <= page.execute_script(
        "return window.innerWidth")
