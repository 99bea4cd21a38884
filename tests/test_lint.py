"""The whole tree passes ruff with the rules of pyproject.toml ([tool.ruff]): pyflakes (unused or undefined
names), pycodestyle, import order, bugbear, comprehensions and pyupgrade."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
