"""A sweep's table, built from its children's reports (pure functions: no store, no torch); its heatmap is
drawn from the same cells by ``api.heatmap``.

Per cell, over the seeds whose child succeeded: final clean and robust accuracy as mean and sample standard
deviation (``std`` is null below two values), each seed's CO verdict (``core.co`` codes; null until the child
succeeded), how many collapsed, and the onset step over the collapsed seeds.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import statistics
from collections.abc import Iterator, Sequence
from typing import Any

Axes = list[tuple[str, list[Any]]]  # (dotted spec path, values), in request order


def grid_cells(axes: Axes) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the last axis varying fastest."""
    paths = [path for path, _ in axes]
    return [dict(zip(paths, values, strict=True)) for values in itertools.product(*(v for _, v in axes))]


def stat(values: Sequence[float]) -> dict[str, Any] | None:
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def summarise_cells(axes: Axes, seeds: list[int], children: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per cell. ``children`` are dicts with ``id``, ``index`` (seed-major: seed position x cells
    + cell), ``status`` and ``report`` (None until the child succeeded)."""
    cells = grid_cells(axes)
    summaries = [{"index": i, "params": params, "jobs": [], "clean_accuracy": None, "robust_accuracy": None,
                  "co": None} for i, params in enumerate(cells)]
    by_cell: list[list[tuple[int, dict[str, Any]]]] = [[] for _ in cells]
    for child in sorted(children, key=lambda c: c["index"]):
        seed = seeds[child["index"] // len(cells)]
        cell = child["index"] % len(cells)
        summaries[cell]["jobs"].append({"id": child["id"], "seed": seed, "status": child["status"]})
        by_cell[cell].append((seed, child))
    for summary, members in zip(summaries, by_cell, strict=True):
        reports = [(seed, child["report"]) for seed, child in members
                   if child["status"] == "succeeded" and child.get("report")]
        finals = [report.get("final") or {} for _, report in reports]
        summary["clean_accuracy"] = stat([f["clean_accuracy"] for f in finals if _number(f.get("clean_accuracy"))])
        summary["robust_accuracy"] = stat([f["robust_accuracy"] for f in finals
                                           if _number(f.get("robust_accuracy"))])
        verdicts = {seed: ((report.get("co") or {}).get("verdict")) for seed, report in reports}
        onsets = [(report.get("co") or {}).get("onset_step") for _, report in reports
                  if (report.get("co") or {}).get("verdict") == "co"]
        summary["co"] = {"verdicts": [{"seed": seed, "verdict": verdicts.get(seed)} for seed, _ in members],
                         "collapsed": sum(verdict == "co" for verdict in verdicts.values()),
                         "measured": sum(verdict is not None for verdict in verdicts.values()),
                         "onset_step": stat([step for step in onsets if _number(step)])}
    return summaries


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def table_rows(axes: Axes, cells: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Flat rows for the CSV: the cell's parameters, then its numbers."""
    for cell in cells:
        co = cell["co"] or {}
        row: dict[str, Any] = dict(cell["params"])
        for name in ("clean_accuracy", "robust_accuracy"):
            value = cell[name] or {}
            row[f"{name}_mean"], row[f"{name}_std"] = value.get("mean"), value.get("std")
        onset = co.get("onset_step") or {}
        row.update(seeds_succeeded=co.get("measured", 0), seeds_co=co.get("collapsed", 0),
                   onset_step_mean=onset.get("mean"), onset_step_std=onset.get("std"),
                   verdicts=" ".join(f"{v['seed']}:{v['verdict'] or '-'}" for v in co.get("verdicts", [])),
                   jobs=" ".join(job["id"] for job in cell["jobs"]))
        yield row


def table_csv(axes: Axes, cells: Sequence[dict[str, Any]]) -> str:
    rows = list(table_rows(axes, cells))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [path for path, _ in axes])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def co_text(cell: dict[str, Any]) -> str:
    """What a heatmap cell says about CO: "no CO", "never robust" (every measured seed: nothing to collapse),
    "CO @ 480" (every measured seed), "2/3 CO @ 480"."""
    co = cell["co"] or {}
    if not co.get("measured"):
        return "-"
    if not co["collapsed"]:
        never = sum(v["verdict"] == "never_robust" for v in co.get("verdicts", []))
        return "never robust" if never == co["measured"] else "no CO"
    onset = co.get("onset_step")
    where = f" @ {onset['mean']:.0f}" if onset else ""
    share = "" if co["collapsed"] == co["measured"] else f"{co['collapsed']}/{co['measured']} "
    return f"{share}CO{where}"
