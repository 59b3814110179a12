"""The scenarios, in the order they run and are reported."""

from __future__ import annotations

from bench.scenario import Scenario
from bench.scenarios import admission, delivery, footprint, pacing, safemode, scaling, throttle

SCENARIOS: tuple[Scenario, ...] = (
    delivery.SCENARIO,
    admission.SCENARIO,
    throttle.SCENARIO,
    pacing.SCENARIO,
    scaling.SCENARIO,
    safemode.SCENARIO,
    footprint.SCENARIO,
)
