"""What a scenario is: the figures it measures, the ratios it is judged by, and one run of it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.harness import Bench
    from bench.sizes import Size


@dataclass(frozen=True)
class Figure:
    """One measured quantity, e.g. sendguard's delivery rate in messages/s."""

    key: str
    label: str
    unit: str


@dataclass(frozen=True)
class Ratio:
    """A figure over its reference from the same run (or over a fixed target when `over` is None)."""

    key: str
    label: str
    of: str
    over: str | None
    target: str = ""
    fixed: float = 1.0  # the denominator when `over` is None


@dataclass
class Sample:
    """One run of one scenario: a value for each figure and notes on how it was measured."""

    values: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def ratio(self, ratio: Ratio) -> float | None:
        numerator = self.values.get(ratio.of)
        denominator = ratio.fixed if ratio.over is None else self.values.get(ratio.over)
        if numerator is None or not denominator:
            return None
        return numerator / denominator


@dataclass(frozen=True)
class Scenario:
    """A named measurement, run several times by `python -m bench`."""

    name: str
    title: str
    figures: tuple[Figure, ...]
    ratios: tuple[Ratio, ...]
    run: Callable[[Bench, Size], Awaitable[Sample]]
    repeat: bool = True  # False: run in the first run only (its figures do not move with load)
