"""``safe_join`` containment (realpath + commonpath) and the API-side dataset-path checks (S13)."""

from __future__ import annotations

import os

import pytest

from api.paths import dataset_path_problem, redact, safe_join
from store.settings import Settings


@pytest.fixture
def root(tmp_path):
    folder = tmp_path / "artifacts" / "job"
    folder.mkdir(parents=True)
    (folder / "report.json").write_text("{}")
    return folder


def test_a_plain_name_joins(root):
    assert safe_join(root, "report.json") == root / "report.json"
    assert safe_join(str(root), "sub/file") == root / "sub" / "file"  # may not exist yet


@pytest.mark.parametrize("name", ["../x", "../../etc/passwd", "/etc/passwd", "sub/../../x", "",
                                  "report.json\x00"])
def test_escapes_are_refused(root, name):
    assert safe_join(root, name) is None


def test_a_sibling_sharing_the_prefix_is_outside(root):
    sibling = root.parent / f"{root.name}-evil"
    sibling.mkdir()
    (sibling / "x").write_text("secret")
    assert str(sibling / "x").startswith(str(root))  # the check a startswith/commonprefix join would pass
    assert safe_join(root, f"../{root.name}-evil/x") is None


def test_a_symlink_leaving_the_folder_is_refused(root, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (root / "checkpoint.pt").symlink_to(outside)
    (root / "linked-dir").symlink_to(tmp_path, target_is_directory=True)
    assert safe_join(root, "checkpoint.pt") is None
    assert safe_join(root, "linked-dir/secret.txt") is None


def test_a_symlink_inside_the_folder_is_fine(root):
    (root / "best.pt").symlink_to(root / "report.json")
    assert safe_join(root, "best.pt") == root / "report.json"


def test_a_symlinked_root_is_resolved(tmp_path, root):
    link = tmp_path / "link"
    link.symlink_to(root, target_is_directory=True)
    assert safe_join(link, "report.json") == root / "report.json"
    assert safe_join(link, "../job/report.json") == root / "report.json"  # '..' of the real root, back inside
    assert safe_join(link, "../../link/report.json") == root / "report.json"
    assert safe_join(link, "../report.json") is None


def test_a_very_long_name_is_contained(root):
    too_long = "a" * (os.pathconf("/", "PC_NAME_MAX") + 10)
    assert safe_join(root, too_long) is not None  # contained; the route's stat then answers 404


@pytest.mark.parametrize(("path", "problem"), [
    ("cifar10-jpeg", None),
    ("sets/cifar10-jpeg", None),
    ("./cifar10", None),
    ("a\x00", "NUL"),
    ("a\nb", "control"),
    ("a\\b", "backslashes"),
    ("C:/data", "relative"),
    ("c:data", "relative"),
    ("/srv/data", "relative"),
    ("~/data", "relative"),
    ("a/../b", "'..'"),
    ("%2e%2e/x", "'..'"),
    ("%252e%252e/x", "'..'"),
    ("..%2f..%2fetc", "'..'"),
    ("%2fetc", "relative"),
    ("a%5cb", "backslashes"),
    ("a%00", "NUL"),
    ("a%20b", "percent-encoded"),
])
def test_dataset_path_problems(path, problem):
    found = dataset_path_problem(path)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_redact_replaces_server_roots(tmp_path):
    settings = Settings(home=tmp_path / "home", data_root=tmp_path / "data")
    message = f"no images under {tmp_path}/data/x; no checkpoint at {tmp_path}/home/artifacts/j/checkpoint.pt"
    assert redact(message, settings) == ("no images under <data root>/x; "
                                         "no checkpoint at <artifacts>/j/checkpoint.pt")
    assert redact(None, settings) is None
