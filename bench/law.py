"""Benchmark: every law on ~10,000 simulated result rows with 200 bootstrap resamples.

A family of 8 sizes x 6 checkpoints x 21 quant specs x 4 datasets (10 metrics) = 10,080 rows.
Prints seconds per stage and for the whole fit_laws() call; the target is a total under 10 s on
a 2-core machine. Run: .venv/bin/python bench/law.py [--boot N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kbitlaw.law.damage.law import fit_damage  # noqa: E402
from kbitlaw.law.document import FitConfig, fit_laws  # noqa: E402
from kbitlaw.law.recommend.frontier import fit_frontiers  # noqa: E402
from kbitlaw.law.sim import simulate_results  # noqa: E402
from kbitlaw.law.size.linear import linear_curves  # noqa: E402
from kbitlaw.law.size.power_law import fit_power_laws_by_spec  # noqa: E402
from kbitlaw.law.size.threshold import fit_thresholds  # noqa: E402
from kbitlaw.law.table import (  # noqa: E402
    components,
    drop_unusable,
    latest_per_size,
    metric_points,
    normalise,
    results_sha,
)

SPECS = [
    "fp16",
    "int3-b64",
    "int4-b64",
    "int5-b64",
    "int6-b64",
    "int8-b64",
    "fp3-b64",
    "fp4-b64",
    "fp5-b64",
    "fp6-b64",
    "fp8-b64",
    "nf3-b64",
    "nf4-b64",
    "int4-b128",
    "int4-b256",
    "int4-b1024",
    "quantile3-b64",
    "quantile4-b64",
    "dynamic4-b64",
    "dynamic8-b64",
    "int3-b64-o2",
]


def timed(label: str, fn, rows: list):
    t = time.perf_counter()
    out = fn()
    rows.append((label, time.perf_counter() - t))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--boot", type=int, default=200)
    args = parser.parse_args()
    config = FitConfig(n_boot=args.boot)
    df = simulate_results(np.geomspace(1.4e7, 2.8e9, 8), np.geomspace(2e9, 3e11, 6), SPECS, seed=1)
    rows: list[tuple[str, float]] = []
    data = timed("prepare (normalise, sha, points)", lambda: _prepare(df), rows)
    points, comp, latest = data
    timed("frontier + recommendation", lambda: fit_frontiers(latest, config), rows)
    timed("threshold law (+ extrapolation)", lambda: fit_thresholds(latest, comp, config, {}), rows)
    timed("loss power law (+ extrapolation)", lambda: fit_power_laws_by_spec(latest, config, {}), rows)
    timed(
        "damage laws (+ held out)", lambda: fit_damage(points, config.n_boot, config.seed, config.level), rows
    )
    timed("linear curves", lambda: linear_curves(latest, config.min_sizes), rows)
    stages = sum(s for _, s in rows)
    result = timed("fit_laws() end to end", lambda: fit_laws(df, config), rows)
    total = rows[-1][1]
    doc = result.doc
    print(f"{df.height} result rows, {len(SPECS)} specs, {args.boot} bootstrap resamples")
    print(f"{'stage':<36} {'seconds':>8} {'share':>7}")
    for label, secs in rows[:-1]:
        print(f"{label:<36} {secs:8.2f} {secs / stages:7.1%}")
    print(f"{'sum of stages':<36} {stages:8.2f}")
    print(f"{rows[-1][0]:<36} {total:8.2f}   target < 10 s: {'met' if total < 10 else 'MISSED'}")
    fits = {k: sum(e["status"] == "ok" for e in doc[k]) for k in ("threshold", "power_law", "damage")}
    rec = doc["recommendation"]
    print(f"fits ok: {fits}; extrapolation checks: {len(doc['extrapolation'])}; ", end="")
    p_best = (rec.get("p_best") or {}).get(str(rec.get("bits")))
    print(f"recommendation: {rec.get('quant')} (P(best) {p_best}, clear {rec.get('clear')})")


def _prepare(df):
    d = normalise(df)
    results_sha(d)
    d, _ = drop_unusable(d)
    comp = components(d)
    points, _ = metric_points(comp)
    latest = latest_per_size(points)
    comp_latest = comp.join(
        latest.select("family", "checkpoint_id").unique(), on=["family", "checkpoint_id"], how="semi"
    )
    return points, comp_latest, latest


if __name__ == "__main__":
    main()
