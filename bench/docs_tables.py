"""Regenerate the measured tables of the docs from the committed records, so that no table is typed by hand.

    python bench/docs_tables.py           # rewrite every generated block in docs/*.md
    python bench/docs_tables.py --check   # exit 1 naming the blocks that differ from what their command prints

A generated block is the text between ``<!-- generated: COMMAND -->`` and ``<!-- /generated -->``, where
COMMAND is a bench script and its arguments (``bench/claims.py table map``); the block holds that command's
output. The commands read only the records committed under bench/data/runs: local runs that were never kept
(runs/claims) do not reach the docs.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^(<!-- generated: (?P<command>[^\n]+) -->\n)(?P<body>.*?)^(<!-- /generated -->)$",
                   re.DOTALL | re.MULTILINE)  # markers on lines of their own


def command_output(command: str) -> str:
    script, *args = shlex.split(command)
    if not (script.startswith("bench/") and script.endswith(".py")):
        raise SystemExit(f"a generated block runs a bench script, not {command!r}")
    env = {**os.environ, "CLAIMS_OUT": str(ROOT / "runs" / "never-kept"), "BENCH_NO_RECORD": "1"}
    result = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{command} failed:\n{result.stderr[-2000:]}")
    return result.stdout.strip() + "\n"


def regenerate(text: str) -> tuple[str, list[str]]:
    """``text`` with every generated block refilled, and the commands whose block changed."""
    changed: list[str] = []

    def refill(match: re.Match[str]) -> str:
        output = command_output(match["command"])
        if output != match["body"]:
            changed.append(match["command"])
        return match.group(1) + output + match.group(4)

    return BLOCK.sub(refill, text), changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is stale")
    args = parser.parse_args()
    stale = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        new, changed = regenerate(text)
        stale += [f"{page.relative_to(ROOT)}: {command}" for command in changed]
        if changed and not args.check:
            page.write_text(new)
    for line in stale:
        print(("stale " if args.check else "updated ") + line)
    if args.check and stale:
        sys.exit(1)


if __name__ == "__main__":
    main()
