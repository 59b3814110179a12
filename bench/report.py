"""Runs summed up: median, min and max of every figure and ratio, as a table and as JSON.

Ratios are taken within each run first (a figure over its reference, measured seconds apart on
the same shared machine), and only then summed up across runs, which are minutes apart.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.scenario import Sample, Scenario


@dataclass(frozen=True)
class Spread:
    """The values one figure or ratio took across runs."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def as_json(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": min(self.values),
            "max": max(self.values),
            "values": self.values,
        }


def _spread(values: list[float | None]) -> Spread | None:
    present = [value for value in values if value is not None]
    return Spread(present) if present else None


def summary(scenario: Scenario, samples: list[Sample]) -> dict[str, Any]:
    """One scenario's runs for machines: every figure and ratio ("n/a" where a run had none)."""
    figures = {}
    for figure in scenario.figures:
        spread = _spread([s.values.get(figure.key) for s in samples])
        entry: dict[str, Any] = {"label": figure.label, "unit": figure.unit}
        entry |= spread.as_json() if spread else {"status": "n/a"}
        figures[figure.key] = entry
    ratios = {}
    for ratio in scenario.ratios:
        spread = _spread([s.ratio(ratio) for s in samples])
        entry = {"label": ratio.label, "target": ratio.target}
        entry |= spread.as_json() if spread else {"status": "n/a"}
        ratios[ratio.key] = entry
    notes = list(dict.fromkeys(note for s in samples for note in s.notes))
    return {"title": scenario.title, "figures": figures, "ratios": ratios, "notes": notes}


def number(value: float) -> str:
    """Three significant figures or so, without exponents: people compare these by eye."""
    size = abs(value)
    if value == int(value):
        return f"{int(value):,}"
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 0.1:
        return f"{value:.2f}"
    return f"{value:.2g}"


def _cells(entry: dict[str, Any]) -> tuple[str, str]:
    if "median" not in entry:
        return str(entry["status"]), ""
    low, high = number(entry["min"]), number(entry["max"])
    return number(entry["median"]), "" if low == high else f"{low} - {high}"


def table(summaries: dict[str, dict[str, Any]]) -> str:
    """The summaries as two aligned text tables: figures, then the ratios that judge them."""
    figure_rows: list[tuple[str, ...]] = [("scenario", "measure", "median", "min - max", "unit")]
    ratio_rows: list[tuple[str, ...]] = [("scenario", "ratio", "median", "min - max", "target")]
    for name, found in summaries.items():
        for entry in found["figures"].values():
            figure_rows.append((name, entry["label"], *_cells(entry), entry["unit"]))
        for entry in found["ratios"].values():
            ratio_rows.append((name, entry["label"], *_cells(entry), entry["target"]))
    notes = [f"  {name}: {note}" for name, found in summaries.items() for note in found["notes"]]
    return "\n\n".join([_aligned(figure_rows), _aligned(ratio_rows), "notes:\n" + "\n".join(notes)])


def _aligned(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = {2, 3}  # right-aligned, so digits line up

    def line(row: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(rows[0]), rule, *(line(row) for row in rows[1:])])
