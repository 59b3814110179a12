"""`python -m bench [--quick] [--json PATH] [--runs N] [--drills]`: run every scenario, report ratios.

Runs go round all scenarios in turn (run 1 of each, then run 2 of each, ...), so a noisy minute on
the shared machine lands on one run of several scenarios rather than on every run of one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import drills
from bench.harness import open_bench
from bench.report import summary, table
from bench.scenario import Sample
from bench.scenarios import SCENARIOS
from bench.sizes import FULL, QUICK, Size


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small amounts, one run: the CI smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON here")
    parser.add_argument("--runs", type=int, metavar="N", help="runs of every scenario (default 3, quick 1)")
    parser.add_argument("--drills", action="store_true", help="also run `pytest -m drill` and count")
    return parser.parse_args()


async def _run_all(size: Size, runs: int) -> dict[str, list[Sample]]:
    samples: dict[str, list[Sample]] = {scenario.name: [] for scenario in SCENARIOS}
    with tempfile.TemporaryDirectory(prefix="sg-bench-") as directory:
        async with open_bench(Path(directory)) as bench:
            for number in range(1, runs + 1):
                for scenario in SCENARIOS:
                    if number > 1 and not scenario.repeat:
                        continue
                    started = time.perf_counter()
                    samples[scenario.name].append(await scenario.run(bench, size))
                    took = time.perf_counter() - started
                    print(
                        f"run {number}/{runs}: {scenario.name} took {took:.1f} s", file=sys.stderr, flush=True
                    )
    return samples


def _machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def main() -> int:
    args = _arguments()
    size = QUICK if args.quick else FULL
    runs = args.runs or size.runs
    # The bench drives sendguard's own classes in-process (admission, its pause, throttles); their
    # warnings about the pause it trips on purpose are not news to whoever reads the table.
    logging.getLogger("sendguard").setLevel(logging.ERROR)
    started = time.perf_counter()
    samples = asyncio.run(_run_all(size, runs))
    summaries = {scenario.name: summary(scenario, samples[scenario.name]) for scenario in SCENARIOS}
    drilled = drills.run() if args.drills else None
    seconds = time.perf_counter() - started
    machine = _machine()
    print(
        f"sendguard bench, {size.name}: {runs} run{'s' if runs > 1 else ''} of each scenario, "
        f"{seconds:.0f} s; {machine['cores']} cores {machine['machine']}, Python {machine['python']}; "
        "median and min - max over runs\n"
    )
    print(table(summaries), flush=True)
    if drilled is not None:
        print(f"\ndrills: {drills.describe(drilled)}")
    if args.json is not None:
        report = {
            "command": " ".join(["python -m bench", *sys.argv[1:]]),
            "size": size.name,
            "runs": runs,
            "seconds": seconds,
            "machine": machine,
            "scenarios": summaries,
            "drills": drilled,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    # A skipped drill proved nothing: it fails the run like a failed one.
    return 0 if drilled is None or drilled["failed"] + drilled["skipped"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
