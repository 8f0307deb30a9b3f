"""Benchmark: how long commands take to start working, idle and beside two CPU-bound processes.

A small family (4 random-init checkpoints, the tests' own) in a fresh store, one dataset, fp16.
For each machine state (idle; two `while True: pass` processes on this machine's cores):
  - nightly, cold: a fresh PREFECT_HOME, so the command starts the local Prefect API itself;
  - nightly, warm: the local API already runs (the usual case: any earlier command started it);
  - fit and predict on the fitted store (plain library calls: no Prefect API at all);
  - the reference: `python -c "import torch, transformers, prefect"`, the imports any command pays.
"Starts evaluating" is the time from exec to the first result in the store (one evaluation
included); the target is <= 30 s beside two hogs with the API warm, <= 5 s for fit and predict.

Run: .venv/bin/python bench/startup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import build_family, write_specs  # noqa: E402  (the tests' tiny family)

from kbitlaw.store import Store  # noqa: E402


def env_for(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "KBITLAW_"))}
    return env | {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def kbitlaw(*args: str) -> list[str]:
    return [sys.executable, "-m", "kbitlaw", *args]


def nightly(work: Path, home: Path) -> tuple[float, float]:
    """(seconds to the first result, seconds to the end) of a nightly on a fresh copy of the store."""
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(work / "family", store / "checkpoints")
    args = ["nightly", "--store", str(store), "--grid", "fp16", "--datasets", "text"]
    args += ["--dataset-specs", str(work / "specs"), "--json"]
    log = work / "nightly.err"
    with open(log, "w") as err:
        began = time.perf_counter()
        proc = subprocess.Popen(kbitlaw(*args), env=env_for(home), stdout=subprocess.DEVNULL, stderr=err)
        first = None
        while proc.poll() is None:
            if first is None and Store(str(store)).list("results"):
                first = time.perf_counter() - began
            time.sleep(0.05)
        end = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"nightly failed: {log.read_text()[-2000:]}")
    return (first if first is not None else end), end


def timed(cmd: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0 and "Traceback" in out.stderr:  # predict may say "insufficient data": exit 1
        raise SystemExit(f"{' '.join(cmd[2:])} failed: {out.stderr[-2000:]}")
    return time.perf_counter() - began


def measure(work: Path, repeats: int) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {}
    store = str(work / "store")
    for i in range(repeats):
        home = work / f"home-{time.time_ns()}"
        reference = timed([sys.executable, "-c", "import torch, transformers, prefect"], env_for(home))
        cold = nightly(work, home)  # starts the local API
        warm = nightly(work, home)  # reuses it
        fit = timed(kbitlaw("fit", "--store", store), env_for(home))
        planned = ("--n-params", "1e5", "--tokens", "1e7")
        predict = timed(kbitlaw("predict", "--store", store, *planned), env_for(home))
        subprocess.run(kbitlaw("api", "stop"), env=env_for(home), capture_output=True)
        for name, value in (
            ("imports (reference)", reference),
            ("nightly, cold API: first result", cold[0]),
            ("nightly, cold API: whole run", cold[1]),
            ("nightly, warm API: first result", warm[0]),
            ("nightly, warm API: whole run", warm[1]),
            ("fit (stored fit)", fit),
            ("predict", predict),
        ):
            figures.setdefault(name, []).append(value)
        print(f"  repeat {i + 1}: warm first result {warm[0]:.1f} s, cold {cold[0]:.1f} s", file=sys.stderr)
    return figures


def table(title: str, figures: dict[str, list[float]]) -> str:
    ref = statistics.median(figures["imports (reference)"])
    lines = [f"### {title}", "", "| step | median s | min-max s | / imports |", "|---|---:|---:|---:|"]
    for name, values in figures.items():
        med = statistics.median(values)
        lines.append(f"| {name} | {med:.1f} | {min(values):.1f}-{max(values):.1f} | {med / ref:.1f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hogs", type=int, default=2, help="CPU-bound processes for the busy run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kbitlaw-startup-") as tmp:
        work = Path(tmp)
        build_family(work / "family")
        write_specs(work / "specs")
        print("idle", file=sys.stderr)
        idle = measure(work, args.repeats)
        print(f"beside {args.hogs} CPU-bound processes", file=sys.stderr)
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
        try:
            busy = measure(work, args.repeats)
        finally:
            for hog in hogs:
                hog.kill()
    print(f"{os.cpu_count()} cores; {args.repeats} repeats each\n")
    print(table("idle", idle) + "\n")
    print(table(f"beside {args.hogs} CPU-bound processes", busy))


if __name__ == "__main__":
    main()
