"""bench/docs_tables.py: the docs' measured tables are what their commands print from the committed records."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import docs_tables  # noqa: E402


def test_a_stale_block_is_refilled_with_its_command_s_output_and_the_text_around_it_kept():
    text = ("before\n<!-- generated: bench/claims.py --help -->\nan old table\n<!-- /generated -->\nafter\n"
            "<!-- generated: bench/claims.py --help -->\n<!-- /generated -->\n")
    new, changed = docs_tables.regenerate(text)
    assert changed == ["bench/claims.py --help"] * 2
    blocks = new.split("<!-- generated: bench/claims.py --help -->\n")
    assert blocks[0] == "before\n" and "an old table" not in new
    first_body, rest = blocks[1].split("<!-- /generated -->\n")
    assert first_body.startswith("usage: claims.py") and "--batch" in first_body and rest == "after\n"
    assert docs_tables.regenerate(new) == (new, [])  # refilled: nothing left to change


def test_only_bench_scripts_run():
    with pytest.raises(SystemExit, match="bench script"):
        docs_tables.regenerate("<!-- generated: rm -rf docs -->\n<!-- /generated -->\n")


def test_the_docs_tables_match_the_committed_records():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "docs_tables.py"), "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, "run python bench/docs_tables.py:\n" + result.stdout + result.stderr[-2000:]
    assert "<!-- generated: bench/claims.py table map -->" in (ROOT / "docs" / "science.md").read_text()
