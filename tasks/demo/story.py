"""Does the demo family tell the story? Evaluate its checkpoints on the builtin suites and check.

The story (what `make demo` should show on the embedded family, kbitlaw.demo.train):
- at 16 bits, mean accuracy over the accuracy suites rises with model size, the largest model is
  well above chance on several suites, and the text loss falls with size and with training;
- weight quantization hurts visibly at 3 bits without blocks and barely at 8 bits.

    table = story_table(store, "demo")      # long: size, step, quant, dataset, metric, value
    story_summary(table)                    # wide: one row per (size, step, quant)
    story_checks(story_summary(table))      # {claim: bool}
    stored_story_table(store, "demo")       # the same table from the nightly's stored results
"""

from __future__ import annotations

from typing import Any

import polars as pl

from kbitlaw.checkpoints import discover
from kbitlaw.data.specs import clean_dataset, load_dataset_specs
from kbitlaw.eval.run import evaluate_specs
from kbitlaw.store import CHECKPOINTS, Store, checkpoint_prefix, parse_result_key, result_keys
from kbitlaw.vocab import ACC, LOSS

ACC_SUITES = ("logic", "causal", "induction", "arithmetic", "cloze", "facts")  # metric `acc`
LOSS_SUITE = "text"  # metric `loss` (nats per token)
STORY_SPECS = "fp16,int3,int4-b64,int8-b64"


def story_table(
    store: Store,
    family: str = "demo",
    *,
    specs: str = STORY_SPECS,
    steps: str = "final",
    sizes: list[str] | None = None,
    datasets: tuple[str, ...] = (*ACC_SUITES, LOSS_SUITE),
) -> pl.DataFrame:
    """acc / loss of the family's checkpoints (steps: "final" = each size's last, or "all") on the
    builtin suites, for every spec; one row per (checkpoint, spec, dataset, metric)."""
    found, errors = discover(store.url(checkpoint_prefix(CHECKPOINTS, family)))
    if errors:
        raise ValueError(str(errors[0]))
    if sizes is not None:
        found = [c for c in found if c.sidecar.get("size") in sizes]
    if steps == "final":
        last: dict[str, int] = {}
        for c in found:
            last[c.sidecar["size"]] = max(last.get(c.sidecar["size"], 0), c.step or 0)
        found = [c for c in found if c.step == last[c.sidecar["size"]]]
    specs_by_name = load_dataset_specs()
    rows = []
    for name in datasets:
        spec = specs_by_name[name]
        clean = clean_dataset(store, spec)
        df = store.read_parquet(clean.key).drop("row", strict=False)
        for ckpt in found:
            for r in evaluate_specs(ckpt.uri, df, spec.kind, specs, dataset=name, delimiter=spec.delimiter):
                if r["metric"] in (ACC, LOSS):
                    rows.append(
                        {
                            "size": ckpt.sidecar["size"],
                            "non_embedding_params": ckpt.sidecar.get("non_embedding_params"),
                            "step": ckpt.step,
                            "tokens_seen": ckpt.tokens_seen,
                            "quant": r["quant"],
                            "dataset": name,
                            "metric": r["metric"],
                            "value": r["value"],
                        }
                    )
    return pl.DataFrame(rows)


def stored_story_table(store: Store, family: str = "demo") -> pl.DataFrame:
    """story_table's rows from the results a nightly run stored (no evaluation): the family's
    checkpoints, STORY_SPECS' quant specs, the newest version of each builtin suite."""
    from kbitlaw.law.io import read_results_store

    quants = set(STORY_SPECS.split(","))
    keys = [k for k in result_keys(store) if (parts := parse_result_key(k)) and parts.quant in quants]
    if not keys:
        return pl.DataFrame()
    df = read_results_store(store, keys).filter(
        pl.col("checkpoint_id").str.starts_with(f"{family}/")
        & pl.col("dataset").is_in([*ACC_SUITES, LOSS_SUITE])
        & pl.col("metric").is_in([ACC, LOSS])
    )
    newest = df.sort("created_at").group_by("dataset").agg(pl.col("dataset_sha").last())
    df = df.join(newest, on=["dataset", "dataset_sha"])
    return df.select(
        size=pl.col("checkpoint_id").str.split("/").list.get(1),
        non_embedding_params=pl.col("n_params"),  # total parameters: the same order of sizes
        step=pl.col("step"),
        tokens_seen=pl.col("tokens_seen"),
        quant=pl.col("quant"),
        dataset=pl.col("dataset"),
        metric=pl.col("metric"),
        value=pl.col("value"),
    )


def story_summary(table: pl.DataFrame) -> pl.DataFrame:
    """One row per (size, step, quant): each suite's acc, their mean, and the text loss."""
    keys = ["size", "non_embedding_params", "step", "tokens_seen", "quant"]
    wide = table.pivot(on="dataset", index=keys, values="value", aggregate_function="first")
    suites = [s for s in ACC_SUITES if s in wide.columns]
    out = wide.with_columns(mean_acc=pl.mean_horizontal(suites)) if suites else wide
    if LOSS_SUITE in out.columns:
        out = out.rename({LOSS_SUITE: "loss"})
    return out.sort("non_embedding_params", "step", "quant")


def story_checks(summary: pl.DataFrame, chance: float = 0.25) -> dict[str, bool]:
    """The demo's claims, each True or False, on a story_summary of the family's checkpoints (the
    final step of each size; every step for "with training"). A claim whose data is missing (a
    suite, a spec or a second size) is left out, not guessed."""
    final = summary.filter(pl.col("step") == pl.col("step").max().over("size"))
    fp16 = final.filter(pl.col("quant") == "fp16").sort("non_embedding_params")
    checks: dict[str, bool] = {}
    if fp16.height < 2:
        return checks
    if "mean_acc" in fp16.columns:
        acc, largest = fp16["mean_acc"].to_list(), fp16.row(-1, named=True)
        checks["mean acc rises with size (fp16)"] = all(
            b > a - 0.01 for a, b in zip(acc, acc[1:], strict=False)
        )
        checks["largest beats smallest by 20 points"] = acc[-1] - acc[0] >= 0.20
        above = sum(largest[s] > chance + 0.15 for s in ACC_SUITES if largest.get(s) is not None)
        checks["largest well above chance on 3 suites"] = above >= 3
    if "loss" in fp16.columns:
        loss = fp16["loss"].to_list()
        checks["loss falls with size (fp16)"] = all(b < a for a, b in zip(loss, loss[1:], strict=False))
        steps = summary.filter(pl.col("quant") == "fp16").sort("step")
        by_size = steps.group_by("size", maintain_order=True).agg(pl.col("loss"))
        if by_size["loss"].list.len().min() > 1:
            checks["loss falls with training (fp16)"] = all(
                all(b < a for a, b in zip(ls, ls[1:], strict=False)) for ls in by_size["loss"].to_list()
            )
    drop3, drop8 = quant_drop(summary, "int3"), quant_drop(summary, "int8-b64")
    if drop3 is not None and drop8 is not None:
        checks["int3 hurts visibly, int8-b64 barely"] = drop3 >= 0.05 and abs(drop8) <= 0.02
    return checks


def quant_drop(summary: pl.DataFrame, quant: str) -> float | None:
    """Mean accuracy lost to `quant` against fp16, averaged over the sizes' final checkpoints."""
    if "mean_acc" not in summary.columns:
        return None
    final = summary.filter(pl.col("step") == pl.col("step").max().over("size"))
    fp16 = final.filter(pl.col("quant") == "fp16").select("size", fp16="mean_acc")
    q = final.filter(pl.col("quant") == quant).select("size", "mean_acc").join(fp16, on="size")
    return None if q.is_empty() else float((q["fp16"] - q["mean_acc"]).mean())


def story(store: Store, family: str = "demo") -> dict[str, Any] | None:
    """Does the family tell the demo's story? Checked on the results nightly stored (fp16, int3 and
    int8-b64 where the grid has them); None when there is nothing to check."""
    table = stored_story_table(store, family)
    if table.is_empty():
        return None
    summary = story_summary(table)
    final = summary.filter(
        (pl.col("step") == pl.col("step").max().over("size")) & (pl.col("quant") == "fp16")
    )
    cols = [c for c in ("size", "step", "mean_acc", "loss") if c in final.columns]
    return {
        "checks": story_checks(summary),
        "fp16": final.select(cols).to_dicts(),
        "drop": {q: quant_drop(summary, q) for q in ("int3", "int8-b64")},
    }
