"""Benchmark: clean + validate a 1M-row multiple-choice file, the path every dataset takes.

Writes a JSON-lines file of N raw rows (four choices each, ~1% dirty: duplicates, empty choices,
gold out of range, nulls), then times each stage the way the nightly runs it: read + parse
(polars), map to canonical columns and clean (polars), write clean + quarantine Parquet to a local
store, and validate with Great Expectations (GX import and context start-up counted separately).
Prints rows/s and each stage's share; the target is the whole path under 60 s on 2 cores.

Run: .venv/bin/python bench/datasets.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kbitlaw.data import world  # noqa: E402
from kbitlaw.data.cleaning import clean_frame  # noqa: E402
from kbitlaw.data.specs import canonical, parse_dataset_spec, raw_input  # noqa: E402
from kbitlaw.store import Store  # noqa: E402


def write_raw(path: Path, n: int, seed: int = 0) -> None:
    """n rows from the builtin suites' templates, made unique by an id, with ~1% dirty rows."""
    rng = random.Random(seed)
    base = world.suite("logic", 2000, seed=seed, difficulty=1) + world.suite("arithmetic", 2000, seed=seed)
    with path.open("w") as f:
        for i in range(n):
            row = dict(base[i % len(base)])
            row["id"] = f"q{i}"
            row["context"] = f"{row['context']} ({i})"  # unique content: only the dirty rows are dropped
            r = rng.random()
            if r < 0.003:
                row["context"] = f"{base[0]['context']} (0)"  # a duplicate of row 0
                row["choices"], row["gold"] = base[0]["choices"], base[0]["gold"]
            elif r < 0.005:
                row["choices"] = [*row["choices"][:3], ""]
            elif r < 0.007:
                row["gold"] = 9
            elif r < 0.009:
                row["context"] = None
            elif r < 0.010:
                row["choices"] = [row["choices"][0], row["choices"][0]]
            f.write(json.dumps(row) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw_path = Path(tmp) / "mc.jsonl"
        write_raw(raw_path, args.rows)
        size_mb = raw_path.stat().st_size / 1e6
        spec = parse_dataset_spec(
            {"name": "bench-mc", "kind": "multiple_choice", "source": str(raw_path), "min_rows": 1000},
            "bench",
        )
        store = Store(str(Path(tmp) / "store"))
        times: dict[str, float] = {}

        t = time.perf_counter()
        raw, input_sha = raw_input(spec)
        times["read + parse (polars)"] = time.perf_counter() - t

        t = time.perf_counter()
        clean, quarantine = clean_frame(canonical(raw, spec), spec.kind, max_chars=spec.max_chars)
        times["canonical + clean (polars)"] = time.perf_counter() - t

        t = time.perf_counter()
        store.write_parquet("datasets/clean/bench-mc/x.parquet", clean)
        store.write_parquet("datasets/quarantine/bench-mc/x.parquet", quarantine)
        times["write Parquet"] = time.perf_counter() - t

        t = time.perf_counter()
        import great_expectations  # noqa: F401

        from kbitlaw.data.validate import validate_frame

        times["import GX"] = time.perf_counter() - t

        t = time.perf_counter()
        report = validate_frame(clean, spec.kind, name=spec.name, sha=input_sha[:12], min_rows=spec.min_rows)
        times["validate (GX + polars helper columns)"] = time.perf_counter() - t

    total = sum(times.values())
    gx = times["import GX"] + times["validate (GX + polars helper columns)"]
    print(
        f"{args.rows:,} raw rows ({size_mb:.0f} MB JSON lines) -> {clean.height:,} clean, "
        f"{quarantine.height:,} quarantined; validation {'passed' if report.success else 'FAILED'}"
    )
    print("| stage | seconds | share |")
    print("|---|---|---|")
    for name, s in times.items():
        print(f"| {name} | {s:.2f} | {s / total:.0%} |")
    print(f"| **total** | **{total:.2f}** | {args.rows / total:,.0f} rows/s |")
    print(f"GX share {gx / total:.0%}, polars + I/O share {(total - gx) / total:.0%}; target total < 60 s")
    counts = quarantine.group_by("reason").len().sort("reason").rows() if quarantine.height else []
    print("quarantined by reason:", ", ".join(f"{r}={n}" for r, n in counts))


if __name__ == "__main__":
    main()
