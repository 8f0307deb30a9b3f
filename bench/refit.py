"""Benchmark: an incremental refit (a night with one new checkpoint), warm-started vs cold.

For each input, the previous fit is fit_laws() on the results without the newest checkpoint (the
one with the most tokens_seen among the largest n_params, all its rows); then, interleaved
(warm, cold, warm, cold, ...) for --repeats runs each:
  - warm: fit_laws(all results, config, previous=previous.doc)
  - cold: fit_laws(all results, config)
and the same for the joint law alone (law/joint/fit.py fit_joint_laws, damage laws fitted once).
The config is the nightly's: FitConfig(chance=default_chance(results)), --boot resamples.

Inputs: (a) the demo family in a store (--store, default .kbitlaw/store; skipped when it has no
results); (b) the 10,080 simulated rows of bench/law.py.

Agreement: per parameter of the joint law (E, A, alpha, B, beta) and of each ok power_law entry
(E, A, alpha), the largest |warm - cold| / (cold interval width); they agree when all are < 0.1.
Exit code 1 when they do not, so the bench is itself a check.

Run: .venv/bin/python bench/refit.py [--store URI] [--repeats N] [--boot N] [--skip-sim]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kbitlaw.law.common import OK  # noqa: E402
from kbitlaw.law.damage.law import fit_damage  # noqa: E402
from kbitlaw.law.document import FitConfig, fit_laws  # noqa: E402
from kbitlaw.law.io import default_chance, read_results_store  # noqa: E402
from kbitlaw.law.joint.fit import fit_joint_laws  # noqa: E402
from kbitlaw.law.sim import simulate_results  # noqa: E402
from kbitlaw.law.table import components, drop_unusable, metric_points, normalise  # noqa: E402
from kbitlaw.store import Store  # noqa: E402

TOLERANCE = 0.1  # |warm - cold| below this share of the cold interval's width: they agree
JOINT_PARAMS = ("E", "A", "alpha", "B", "beta")
POWER_PARAMS = ("E", "A", "alpha")


def law_specs() -> list[str]:
    """bench/law.py's quant specs (the same simulated family)."""
    spec = importlib.util.spec_from_file_location("bench_law", Path(__file__).with_name("law.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.SPECS)


def simulated() -> pl.DataFrame:
    return simulate_results(np.geomspace(1.4e7, 2.8e9, 8), np.geomspace(2e9, 3e11, 6), law_specs(), seed=1)


def without_newest(results: pl.DataFrame) -> tuple[pl.DataFrame, str]:
    """The results without the newest checkpoint: most tokens_seen among the largest n_params."""
    largest = results.filter(pl.col("n_params") == pl.col("n_params").max())
    newest = largest.sort("tokens_seen", descending=True)["checkpoint_id"][0]
    return results.filter(pl.col("checkpoint_id") != newest), newest


def joint_inputs(results: pl.DataFrame, config: FitConfig) -> tuple[pl.DataFrame, list[dict]]:
    """The joint law's inputs as fit_laws() makes them: metric points and the damage entries."""
    df, _ = drop_unusable(normalise(results))
    points, _ = metric_points(components(df))
    damage, _, _ = fit_damage(points, config.n_boot, config.seed, config.level)
    return points, damage


def interleaved(warm, cold, repeats: int) -> tuple[float, float, object, object]:
    """Median seconds of warm() and cold(), run alternately; the last result of each."""
    times: dict[str, list[float]] = {"warm": [], "cold": []}
    out = {}
    for _ in range(repeats):
        for name, fn in (("warm", warm), ("cold", cold)):
            t = time.perf_counter()
            out[name] = fn()
            times[name].append(time.perf_counter() - t)
    return statistics.median(times["warm"]), statistics.median(times["cold"]), out["warm"], out["cold"]


def entries(doc: dict, law: str) -> list[dict]:
    found = doc.get(law)
    return found if isinstance(found, list) else [found] if isinstance(found, dict) else []


def g(x: float | None) -> str:
    return "None" if x is None else f"{x:.6g}"


def gaps(warm: dict, cold: dict) -> tuple[dict[str, float | None], dict[str, str]]:
    """'law.param' -> the largest |warm - cold| / cold interval width over the law's ok entries,
    and where it is: the entry, both estimates and the cold interval."""
    out: dict[str, float | None] = {}
    where: dict[str, str] = {}
    for law, params, key in (
        ("joint_law", JOINT_PARAMS, lambda e: e.get("family")),
        ("power_law", POWER_PARAMS, lambda e: (e.get("family"), e.get("quant"), e.get("metric"))),
    ):
        warm_by = {key(e): e for e in entries(warm, law)}
        for c in entries(cold, law):
            if c.get("status") != OK:
                continue
            w = warm_by.get(key(c))
            for p in params:
                name = f"{law}.{p}"
                if p in (c.get("unidentified") or []):  # no interval: the data do not show its term
                    where.setdefault(name, f"{key(c)}: not identified (no interval), skipped")
                    continue
                out.setdefault(name, None)
                if w is None or w.get("status") != OK or w.get(p) is None or c.get(p) is None:
                    out[name] = float("inf")  # ok cold but no warm number: a disagreement
                    continue
                lo, hi = (c.get("ci") or {}).get(p, [None, None])
                width = (hi - lo) if lo is not None and hi is not None else float("nan")
                diff = abs(w[p] - c[p])
                gap = diff / width if width > 0 else (0.0 if diff == 0 else float("inf"))
                if out[name] is None or gap > out[name]:
                    out[name] = gap
                    where[name] = f"{key(c)}: warm {w[p]:.6g}, cold {c[p]:.6g}, cold CI [{g(lo)}, {g(hi)}]"
    return out, where


def bench(name: str, results: pl.DataFrame, config: FitConfig, repeats: int) -> tuple[str, bool]:
    before, newest = without_newest(results)
    new_rows = results.height - before.height
    print(f"\n## {name}: {results.height} rows; new checkpoint {newest} ({new_rows} rows)")
    t = time.perf_counter()
    previous = fit_laws(before, config).doc
    print(f"previous fit (without it): {time.perf_counter() - t:.1f} s")
    fw, fc, warm, cold = interleaved(
        lambda: fit_laws(results, config, previous=previous).doc,
        lambda: fit_laws(results, config).doc,
        repeats,
    )
    points, damage = joint_inputs(results, config)
    jw, jc, jwarm, jcold = interleaved(
        lambda: fit_joint_laws(points, damage, config, previous)[0],
        lambda: fit_joint_laws(points, damage, config)[0],
        repeats,
    )
    flags = [
        (e.get("fit") or {}).get("warm_started") for doc in (warm, cold) for e in entries(doc, "joint_law")
    ]
    print(f"fit_laws: warm {fw:.2f} s, cold {fc:.2f} s; joint law alone: warm {jw:.2f} s, cold {jc:.2f} s")
    print(
        f"warm-started: power/threshold starts {warm.get('warm_started')} (cold {cold.get('warm_started')}); "
        f"joint_law fit.warm_started warm/cold {flags}"
    )
    same = all(
        (a.get(p), a.get("ci")) == (b.get(p), b.get("ci"))
        for a, b in zip(jwarm, entries(warm, "joint_law"), strict=True)
        for p in JOINT_PARAMS
    ) and all(
        (a.get(p), a.get("ci")) == (b.get(p), b.get("ci"))
        for a, b in zip(jcold, entries(cold, "joint_law"), strict=True)
        for p in JOINT_PARAMS
    )
    print(f"joint law alone == joint law in fit_laws (warm and cold): {same}")
    found, where = gaps(warm, cold)
    n_power = sum(e.get("status") == OK for e in entries(cold, "power_law"))
    print(f"max |warm - cold| / cold CI width (joint law; {n_power} ok power_law entries):")
    for p, g in found.items():
        verdict = "agree" if g is not None and g < TOLERANCE else "DISAGREE"
        print(f"  {p:<16} {'-' if g is None else f'{g:.4g}'}  {verdict}  ({where.get(p, 'no entry')})")
    worst = max((g for g in found.values() if g is not None), default=0.0)
    agree = all(g is not None and g < TOLERANCE for g in found.values())
    print(f"{name}: {'agree' if agree else 'DISAGREE'} (worst {worst:.4f}, tolerance {TOLERANCE})")
    row = (
        f"| {name} | {results.height} | {fw:.2f} | {fc:.2f} | {fc / fw:.2f} | "
        f"{jw:.2f} | {jc:.2f} | {jc / jw:.2f} | {worst:.3f} |"
    )
    return row, agree


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--store", default=str(ROOT / ".kbitlaw" / "store"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--boot", type=int, default=200)
    parser.add_argument("--skip-sim", action="store_true", help="only the store's results")
    args = parser.parse_args()
    began = time.perf_counter()
    print(
        f"machine: {os.cpu_count()} CPUs, python {platform.python_version()}, numpy {np.__version__}, "
        f"polars {pl.__version__}; {args.boot} bootstrap resamples, {args.repeats} repeats"
    )
    rows, agree = [], True
    store = Store(args.store)
    try:
        demo = read_results_store(store)
    except Exception as exc:  # no store, no results/: this input is skipped
        print(f"\nskipping the demo family: no results in {store.uri} ({type(exc).__name__}: {exc})")
        demo = None
    if demo is not None and demo.height:
        config = FitConfig(n_boot=args.boot, chance=default_chance(demo, store))
        row, ok = bench("demo (store)", demo, config, args.repeats)
        rows.append(row)
        agree &= ok
    elif demo is not None:
        print(f"\nskipping the demo family: no results in {store.uri}")
    if not args.skip_sim:
        sim = simulated()
        config = FitConfig(n_boot=args.boot, chance=default_chance(sim))
        row, ok = bench("simulated (bench/law.py)", sim, config, args.repeats)
        rows.append(row)
        agree &= ok
    print()
    print(
        "| input | rows | fit_laws warm s | cold s | cold/warm | joint law warm s | cold s | cold/warm "
        "| max \\|warm-cold\\|/CI width |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print(
        f"\nmedian of {args.repeats} interleaved runs each; {args.boot} bootstrap resamples; "
        f"{os.cpu_count()} CPUs, python {platform.python_version()}, numpy {np.__version__}"
    )
    print(f"warm vs cold: {'agree' if agree else 'DISAGREE'}; total {time.perf_counter() - began:.0f} s")
    if not agree:
        sys.exit(1)


if __name__ == "__main__":
    main()
