"""`--drills`: the incident drills (`pytest -m drill -q`), summed up as passed and failed counts.

They are correctness under failure (kill -9, restarts), not speed, so the bench only counts them;
pytest's own output shows what failed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import ROOT

_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped)")


def run() -> dict[str, Any]:
    """Run the drills in the repository; counts by outcome and the seconds they took."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sg-drills-") as scratch:
        figures_path = Path(scratch) / "figures.jsonl"
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-m", "drill", "-q", "-p", "no:cacheprovider"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=1800,
            env=os.environ | {"SENDGUARD_DRILL_FIGURES": str(figures_path)},
        )
        reported = figures_path.read_text().splitlines() if figures_path.exists() else []
    figures = [json.loads(line) for line in reported]
    lines = result.stdout.strip().splitlines()
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    for number, outcome in _COUNT.findall(lines[-1] if lines else ""):
        counts["errors" if outcome.startswith("error") else outcome] = int(number)
    if result.returncode not in (0, 1) or not any(counts.values()):
        counts["errors"] += 1  # pytest could not run them at all: that is a failure too
    counts["failed"] += counts.pop("errors")
    return {
        **counts,
        "seconds": time.perf_counter() - started,
        "exit_code": result.returncode,
        "figures": figures,
    }


def describe(counts: dict[str, Any]) -> str:
    lines = [
        f"{counts['passed']} passed, {counts['failed']} failed"
        + (f", {counts['skipped']} skipped" if counts["skipped"] else "")
        + f" in {counts['seconds']:.0f} s (pytest -m drill -q)"
    ]
    for found in counts["figures"]:
        values = ", ".join(f"{name} {value}" for name, value in found.items() if name != "drill")
        lines.append(f"  {found['drill']}: {values}")
    return "\n".join(lines)
