"""Benchmark: the nightly flow on the demo family, run as a user runs it (`kbitlaw nightly --json`).

Three runs, each a fresh `kbitlaw nightly` process, the first on a fresh PREFECT_HOME (it starts the
local Prefect API), the others reusing that API as a user's later commands do:
  1. full:   every checkpoint of the demo family, nothing in the store yet but the checkpoints;
  2. no-op:  the same again: nothing new, so no model is loaded (target: <= 30 s, start-up included);
  3. one new checkpoint: a copy of the store without one checkpoint's results (and no fit or
     report), i.e. the state the night before that checkpoint arrived: its own evaluations + refit.
For each: process wall time, the flow's own time, the time inside task bodies (model work =
load + quantize + evaluate + write; other = clean/validate, fit, report) and what is left, the
orchestration (Prefect task runs, states, futures). Run with one worker so the sums are exact.

Run: .venv/bin/python bench/nightly.py [--source .kbitlaw/store] [--grid SPECS] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PREFECT_HOME = Path(tempfile.mkdtemp(prefix="kbitlaw-bench-prefect-"))  # stopped at the end

from kbitlaw.checkpoints import discover  # noqa: E402
from kbitlaw.store import Store  # noqa: E402


def nightly(store: Path, grid: str, workers: int) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "kbitlaw", "nightly", "--store", str(store), "--grid", grid]
    cmd += ["--workers", str(workers), "--json"]
    env = {**os.environ, "PREFECT_API_URL": "", "PREFECT_HOME": str(PREFECT_HOME)}  # the bench's own API
    began = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    wall = time.perf_counter() - began
    if not out.stdout.strip():
        raise SystemExit(f"nightly failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return wall, json.loads(out.stdout)


def row(name: str, wall: float, s: dict) -> str:
    flow, t = s["seconds"], s.get("timing", {})
    work, other = t.get("model_work", 0.0), t.get("other_tasks", 0.0)
    orchestration = max(0.0, flow - work - other)
    ev = s["evaluations"]
    return (
        f"| {name} | {wall:.1f} | {wall - flow:.1f} | {flow:.1f} | {work:.1f} | {other:.1f} | "
        f"{orchestration:.1f} ({orchestration / flow:.0%}) | "
        f"{ev['computed']} computed, {ev['cached']} cached, {ev['failed']} failed |"
    )


def main() -> None:
    try:
        from kbitlaw.flows.demo import DEMO_GRID as default_grid
    except ImportError:
        default_grid = "quick"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--source", default=str(ROOT / ".kbitlaw" / "store"), help="store holding the demo family"
    )
    ap.add_argument("--grid", default=default_grid)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()

    source = Store(args.source)
    found, _ = discover(source.url("checkpoints"))
    if not found:
        from kbitlaw.demo.train import build_family

        print("building the demo family into", source.uri, file=sys.stderr)
        build_family(source)
        found, _ = discover(source.url("checkpoints"))
    last = max(found, key=lambda c: (c.n_params, c.step or 0))  # the largest, latest: the costliest
    print(f"{len(found)} checkpoints, grid {args.grid}, {args.workers} worker(s)", file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full"
        shutil.copytree(Path(source.uri) / "checkpoints", full / "checkpoints")
        runs = [("full", *nightly(full, args.grid, args.workers))]
        runs.append(("no-op (nothing new)", *nightly(full, args.grid, args.workers)))
        night_before = Path(tmp) / "one-new"
        shutil.copytree(full, night_before)
        for area in (f"results/{last.fingerprint}", "fits", "reports"):
            shutil.rmtree(night_before / area, ignore_errors=True)
        runs.append((f"one new checkpoint ({last.id})", *nightly(night_before, args.grid, args.workers)))

    print(
        "| run | process wall s | start-up + shutdown s | flow s | model work s | other tasks s | "
        "orchestration s (share of flow) | evaluations |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, wall, summary in runs:
        print(row(name, wall, summary))
    full_work = runs[0][2]["timing"]["model_work"]
    one_work = runs[2][2]["timing"]["model_work"]
    share = last.n_params / sum(c.n_params for c in found)
    print(
        f"\none new checkpoint: {runs[2][1]:.1f} s wall = {runs[2][1] / runs[0][1]:.1%} of the full run; "
        f"its model work {one_work:.1f} s = {one_work / full_work:.1%} of the full run's "
        f"(its share of the family's parameters: {share:.1%}; of its checkpoints: {1 / len(found):.1%})"
    )


if __name__ == "__main__":
    try:
        main()
    finally:  # the bench's local Prefect API goes with it
        stop = [sys.executable, "-m", "kbitlaw", "api", "stop"]
        subprocess.run(stop, env={**os.environ, "PREFECT_HOME": str(PREFECT_HOME)}, capture_output=True)
        shutil.rmtree(PREFECT_HOME, ignore_errors=True)
