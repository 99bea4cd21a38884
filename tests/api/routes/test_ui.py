"""The dashboard's server side (api/routes/ui.py), in process: every page and static file under /ui carries
the strict Content-Security-Policy, no page holds inline script, style or event handlers, every referenced
file exists, nothing is fetched from another origin, and the API itself gains no CORS. The pages in a real
browser: tests/ui."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from api.routes.ui import PAGES, UI_DIR

PAGE_URLS = ["/ui/", "/ui/jobs", "/ui/jobs/some-id", "/ui/sweeps", "/ui/sweeps/some-id", "/ui/submit"]


class Collector(HTMLParser):
    """Scripts, styles, event-handler attributes and the URLs a page loads."""

    def __init__(self) -> None:
        super().__init__()
        self.inline_scripts, self.handlers, self.style_attributes, self.urls = 0, [], [], []
        self.in_script = False

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        self.handlers += [name for name, _ in attrs if name.startswith("on")]
        self.style_attributes += [tag for name, _ in attrs if name == "style"]
        if tag == "style":
            self.inline_scripts += 1  # an inline stylesheet is as forbidden as an inline script
        if tag == "script":
            self.in_script = "src" not in values
            if "src" in values:
                self.urls.append(values["src"])
        if tag == "link" and "href" in values:
            self.urls.append(values["href"])

    def handle_data(self, data):
        if self.in_script and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag):
        if tag == "script":
            self.in_script = False


@pytest.mark.parametrize("url", PAGE_URLS)
def test_pages_carry_the_strict_csp_and_no_inline_code(client, url):
    response = client.get(url)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    for directive in ("default-src 'self'", "script-src 'self';", "frame-ancestors 'none'"):
        assert directive in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    page = Collector()
    page.feed(response.text)
    assert (page.inline_scripts, page.handlers, page.style_attributes) == (0, [], [])
    for src in page.urls:
        assert src.startswith("/ui/static/"), src  # this server only: no CDN
        asset = client.get(src)
        assert asset.status_code == 200, src
        assert asset.headers["content-security-policy"] == policy


def test_scripts_never_write_html_and_fetch_only_this_server():
    """User strings reach the page as text: no innerHTML, outerHTML, insertAdjacentHTML or document.write in
    our scripts; fetches go to relative /v1 paths (connect-src 'self' would block others anyway)."""
    for script in sorted((UI_DIR / "static").glob("*.js")):
        source = script.read_text()
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function",
                             source), script.name
        assert not re.search(r"https?://", source.replace("http://www.w3.org/2000/svg", "")), script.name


def test_every_page_has_its_body_and_script():
    for name, page in PAGES.items():
        assert (UI_DIR / "pages" / f"{page.body}.html").is_file()
        assert (UI_DIR / "static" / f"{name}.js").is_file()
        for extra in page.scripts:
            assert (UI_DIR / "static" / extra).is_file()


def test_every_form_control_has_a_label():
    """Screen readers name each control: a <label for=id>, or an aria-label."""
    for fragment in sorted((UI_DIR / "pages").glob("*.html")):
        text = fragment.read_text()
        labelled = set(re.findall(r'<label for="([^"]+)"', text))
        for tag, attributes in re.findall(r"<(input|select|textarea|progress)\b([^>]*)>", text):
            control = re.search(r'id="([^"]+)"', attributes)
            named = "aria-label=" in attributes or (control and control.group(1) in labelled)
            assert named, (fragment.name, tag)


def test_the_vendored_library_comes_with_its_licence():
    vendor = UI_DIR / "static" / "vendor"
    assert "js-yaml 4.1.0" in (vendor / "js-yaml.min.js").read_text()[:200]
    assert "MIT License" in (vendor / "js-yaml.LICENSE").read_text()


def test_root_and_ui_redirect_to_the_sign_in_page(client):
    for url in ("/", "/ui"):
        response = client.get(url, follow_redirects=False)
        assert response.status_code == 307 and response.headers["location"] == "/ui/"


def test_static_files_stay_inside_their_folder(client):
    assert client.get("/ui/static/../../main.py").status_code == 404
    assert client.get("/ui/static/%2e%2e/%2e%2e/main.py").status_code == 404
    assert client.get("/ui/static/missing.js").status_code == 404


def test_the_api_gains_no_cors_and_no_dashboard_routes_in_its_schema(client):
    response = client.get("/v1/jobs", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers
    preflight = client.options("/v1/jobs", headers={"Origin": "https://evil.example",
                                                    "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    assert "content-security-policy" not in response.headers  # API responses are JSON, not pages
    schema = client.app.openapi()  # built whether or not this app serves /openapi.json
    assert not [path for path in schema["paths"] if path == "/" or path.startswith("/ui")]


def test_the_package_ships_the_dashboard_files():
    """pyproject's package-data globs match every file of api/ui (a wheel without them serves blank pages)."""
    import tomllib

    globs = tomllib.loads((Path(__file__).resolve().parents[3] / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-data"]["api"]
    api_dir = UI_DIR.parent
    shipped = {path for pattern in globs for path in api_dir.glob(pattern) if path.is_file()}
    assert shipped == {path for path in UI_DIR.rglob("*") if path.is_file()}
