"""Per-attempt run folders (issue 23, item 3): what a new attempt takes over, and what the API serves."""

from __future__ import annotations

from pathlib import Path

from store.settings import Settings
from worker.runner import carry_over


def write(folder: Path, **files: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name.replace("_pt", ".pt")).write_bytes(content)


def test_a_new_attempt_takes_the_newest_earlier_checkpoint(tmp_path):
    settings = Settings(home=tmp_path)
    write(settings.attempt_folder("j", 1), checkpoint_pt=b"one", best_pt=b"best-one")
    write(settings.attempt_folder("j", 2), best_pt=b"no checkpoint yet")  # died before its first epoch
    write(settings.attempt_folder("j", 3), checkpoint_pt=b"three")
    out = settings.attempt_folder("j", 4)
    carry_over(settings, "j", 4, out)
    assert (out / "checkpoint.pt").read_bytes() == b"three" and not (out / "best.pt").exists()
    assert sorted(path.name for path in out.iterdir()) == ["checkpoint.pt"]  # no temporary file left
    out2 = settings.attempt_folder("j", 3)  # attempt 3 itself looks only at attempts 2 and 1
    (out2 / "checkpoint.pt").unlink()
    carry_over(settings, "j", 3, out2)
    assert (out2 / "checkpoint.pt").read_bytes() == b"one" and (out2 / "best.pt").read_bytes() == b"best-one"


def test_a_run_folder_from_before_attempt_folders_is_the_oldest_source(tmp_path):
    settings = Settings(home=tmp_path)
    write(settings.artifacts / "j", checkpoint_pt=b"legacy")
    out = settings.attempt_folder("j", 2)
    carry_over(settings, "j", 2, out)
    assert (out / "checkpoint.pt").read_bytes() == b"legacy"


def test_an_attempt_with_its_own_checkpoint_or_nothing_to_take_keeps_what_it_has(tmp_path):
    settings = Settings(home=tmp_path)
    write(settings.attempt_folder("j", 1), checkpoint_pt=b"one")
    write(settings.attempt_folder("j", 2), checkpoint_pt=b"mine")  # a retry of the same attempt's start
    carry_over(settings, "j", 2, settings.attempt_folder("j", 2))
    assert (settings.attempt_folder("j", 2) / "checkpoint.pt").read_bytes() == b"mine"
    carry_over(settings, "k", 1, settings.attempt_folder("k", 1))
    assert not settings.attempt_folder("k", 1).exists()
