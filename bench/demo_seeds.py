"""Does the demo family give the same answer for every seed? Train it for seeds 0, 1, 2 (each in its
own store under ROOT, kept and reused), evaluate each size's final checkpoint on the builtin suites
(fp16, int3, int8-b64; fp16 at every step for "loss falls with training") and print, per size, the
fp16 mean accuracy and `text` loss of every seed with their spread (max - min), and the story checks
per seed. The seed changes the corpus sample, the initial weights and the batch order, as another
machine's arithmetic would change a run.

    .venv/bin/python bench/demo_seeds.py [ROOT] [--seeds 0,1,2] [--sizes h16-l1,h32-l2]

The issue's target: spreads of at most 0.06 in accuracy (each within +-0.03) and 0.02 in loss (each
within +-0.01), and every story check holding for every seed.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import polars as pl

from kbitlaw.demo.family import TrainConfig, family_sizes
from kbitlaw.demo.story import story_checks, story_summary, story_table
from kbitlaw.demo.train import build_family
from kbitlaw.flows.demo import demo_family
from kbitlaw.store import Store


def seed_summary(root: str, seed: int, sizes: str | None) -> tuple[pl.DataFrame, dict[str, bool], float]:
    """Train (what is missing) and evaluate one seed's family: its final fp16 rows and story checks."""
    store, family = Store(f"{root}/seed-{seed}"), demo_family(seed)
    began = time.perf_counter()
    build_family(store, family, sizes=family_sizes(sizes), config=replace(TrainConfig(), seed=seed))
    trained = time.perf_counter() - began
    table = pl.concat(
        [
            story_table(store, family, specs="fp16", steps="all"),
            story_table(store, family, specs="int3,int8-b64", steps="final"),
        ]
    )
    summary = story_summary(table)
    final = summary.filter(
        (pl.col("quant") == "fp16") & (pl.col("step") == pl.col("step").max().over("size"))
    ).select("size", "non_embedding_params", "mean_acc", "loss", seed=pl.lit(seed))
    return final, story_checks(summary), trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", default=".kbitlaw/bench-seeds")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sizes", default=None)
    args = parser.parse_args()
    rows, checks = [], {}
    for seed in (int(s) for s in args.seeds.split(",")):
        final, checks[seed], seconds = seed_summary(args.root, seed, args.sizes)
        print(f"seed {seed}: trained in {seconds:.0f} s (0 when cached)", flush=True)
        rows.append(final)
    table = pl.concat(rows)
    wide = (
        table.group_by("size", "non_embedding_params")
        .agg(
            acc=pl.col("mean_acc").sort_by("seed").round(3),
            acc_spread=(pl.col("mean_acc").max() - pl.col("mean_acc").min()).round(3),
            loss=pl.col("loss").sort_by("seed").round(3),
            loss_spread=(pl.col("loss").max() - pl.col("loss").min()).round(3),
        )
        .sort("non_embedding_params")
    )
    with pl.Config(tbl_rows=20, tbl_width_chars=160, fmt_table_cell_list_len=5):
        print(wide)
    print(f"largest spread: accuracy {wide['acc_spread'].max():.3f}, loss {wide['loss_spread'].max():.3f}")
    for seed, held in checks.items():
        print(
            f"seed {seed}: {sum(held.values())} of {len(held)} story checks hold;",
            {k: v for k, v in held.items() if not v},
        )


if __name__ == "__main__":
    main()
