"""The bench's smoke run, as CI runs it: `python -m bench --quick` reports every scenario with figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parent.parent
# Counts of what should not happen (messages reaching the relay after a trip) are best at zero.
_MAY_BE_ZERO = "messages"


@pytest.mark.slow
@pytest.mark.timeout(300)  # the bench's own limit below, not the suite's 120 s, which ends the worker
@pytest.mark.usefixtures("measuring_alone")
def test_the_quick_bench_reports_every_scenario_with_figures(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,  # about 35 s alone; a loaded 2-core machine running the other worker doubles it
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "sendguard bench, quick" in result.stdout
    report = json.loads(path.read_text())
    assert list(report["scenarios"]) == [scenario.name for scenario in SCENARIOS]
    for scenario in SCENARIOS:
        found = report["scenarios"][scenario.name]
        for figure in scenario.figures:
            entry = found["figures"][figure.key]
            where = f"{scenario.name}: {figure.label}"
            assert "median" in entry, (where, entry.get("status"))
            assert entry["median"] > 0 or (figure.unit == _MAY_BE_ZERO and entry["median"] == 0), where
        for key, ratio in found["ratios"].items():
            if key.startswith("window"):  # throttle exactness is a property, not a speed
                assert ratio["max"] <= 1, f"{scenario.name}: {ratio['label']} = {ratio['max']}"
