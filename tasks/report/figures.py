"""The report's figures, drawn with matplotlib's object API (no pyplot: no global state, any thread).

Each function takes one family's points (law/table.py's points, `latest`: each size's latest checkpoint),
the fit document and/or its long table (fit.parquet), and returns a Figure record: PNG bytes, or
no image and a note saying why ("not testable with this grid", "insufficient data").
Numbers drawn are measured points and fitted curves from the fit; nothing is smoothed or invented.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from kbitlaw.law.claims.specs import best_per_bits, headline_metric, specs_of
from kbitlaw.law.numerics.stats import NO_DATA, NOT_TESTABLE, higher_is_better, score
from kbitlaw.vocab import ACC_OF, BASELINES, LOSS, MEAN_ACC, gb, gb_bits

DPI = 100
WIDTH = 11.0  # inches: 1100 px, readable in a 1280 px window
BIT_COLORS = {
    2: "#7f0000",
    3: "#d62728",
    4: "#1f77b4",
    5: "#2ca02c",
    6: "#9467bd",
    7: "#8c564b",
    8: "#ff7f0e",
}
DTYPE_COLORS = {
    "quantile": "#1f77b4",
    "fp": "#ff7f0e",
    "nf": "#2ca02c",
    "int": "#d62728",
    "dynamic": "#9467bd",
}
METRIC_LABEL = {MEAN_ACC: "Mean zero-shot accuracy", LOSS: "Loss (nats/token, lower is better)"}
TOTAL_BITS = "Total model bits (log scale)"


@dataclass(frozen=True)
class Figure:
    id: str
    title: str
    caption: str
    png: bytes | None = None
    note: str | None = None  # why there is no image
    error: bool = False  # the note is the error line of a figure that failed to draw (report/guard.py)


def bit_color(k: int) -> str:
    return BIT_COLORS.get(int(k), "#444444")


def metric_label(metric: str) -> str:
    return METRIC_LABEL.get(metric, f"Accuracy on {metric.removeprefix(ACC_OF)}")


def new_figure(ncols: int = 1, height: float = 5.2):
    """A matplotlib Figure with `ncols` axes side by side, readable fonts."""
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(WIDTH, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
        ax.tick_params(labelsize=10)
    return fig, list(axes)


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def memory_axis(ax) -> None:
    """A second x axis on top in gigabytes of the total bits, for the reader who thinks in GPU memory."""
    top = ax.secondary_xaxis("top", functions=(gb, gb_bits))
    top.set_xlabel("Memory (GB)", fontsize=10)
    top.tick_params(labelsize=9)


def empty_note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=12, color="#666")
    ax.set_xticks([])
    ax.set_yticks([])


# -- 1: the classic k-bit scaling plot ---------------------------------------------------------------


def scaling_plot(latest: pl.DataFrame, table: pl.DataFrame, family: str, scope: str) -> Figure:
    """Metric vs total model bits, one line per bit width (its best spec), the Pareto frontier marked."""
    title = "Accuracy versus total model bits"
    caption = (
        "Each line is one bit width (its best data type and block size in this grid); each point one "
        "model size at its latest checkpoint. The black steps are the Pareto frontier: for a memory "
        "budget on the x axis, the best model that fits. Dettmers & Zettlemoyer found 4-bit on it almost "
        "everywhere."
    )
    metrics = [m for m in (MEAN_ACC, LOSS) if (latest["metric"] == m).any()]
    if not metrics:
        return Figure("scaling", title, caption, note=NO_DATA)
    fig, axes = new_figure(len(metrics), height=5.6)
    for ax, metric in zip(axes, metrics, strict=True):
        scored = score(latest, metric)
        for k, quant in sorted(best_per_bits(scored).items()):
            pts = scored.filter(pl.col("quant") == quant).sort("total_bits")
            name = "16-bit" if k >= 16 else f"{k}-bit"
            ax.plot(
                pts["total_bits"],
                pts["value"],
                "o-",
                color=bit_color(k),
                lw=2,
                ms=5,
                label=f"{name} ({quant})",
            )
        front = table.filter(
            pl.col("section") == "frontier", pl.col("family") == scope, pl.col("metric") == metric
        ).sort("total_bits")
        if front.height:
            x = np.append(front["total_bits"].to_numpy(), scored["total_bits"].max())
            y = np.append(front["value"].to_numpy(), front["value"][-1])
            ax.step(x, y, where="post", color="black", lw=1.2, alpha=0.8, label="Pareto frontier")
            ax.scatter(
                front["total_bits"], front["value"], s=90, facecolors="none", edgecolors="black", zorder=5
            )
        ax.set_xscale("log")
        ax.set_xlabel(TOTAL_BITS, fontsize=11)
        ax.set_ylabel(metric_label(metric), fontsize=11)
        memory_axis(ax)
        ax.legend(fontsize=9, loc="lower right" if higher_is_better(metric) else "upper right")
    fig.suptitle(f"k-bit scaling: {family}", fontsize=13)
    return Figure("scaling", title, caption, png(fig))


# -- 2, 3: data types and block sizes -------------------------------------------------------------------


def versus_baseline(latest: pl.DataFrame, metric: str) -> tuple[pl.DataFrame, str]:
    """The metric as damage against the same checkpoint's 16-bit model when one was evaluated:
    loss increase, or accuracy lost (positive = worse). Differences between data types are a few
    hundredths on a scale of several units, so absolute curves would lie on top of each other.
    Without a 16-bit baseline: the metric itself."""
    pts = latest.filter(pl.col("metric") == metric)
    base = (
        pts.filter(pl.col("quant").is_in(list(BASELINES)))
        .group_by("checkpoint_id")
        .agg(pl.col("value").first().alias("base"))
    )
    if base.height == 0:
        return pts.with_columns(y=pl.col("value")), metric_label(metric)
    sign = 1.0 if metric == LOSS else -1.0
    damaged = pts.join(base, on="checkpoint_id").with_columns(y=(pl.col("value") - pl.col("base")) * sign)
    label = "Loss increase over 16-bit (nats/token)" if metric == LOSS else "Accuracy lost vs 16-bit"
    return damaged, label


def dtype_plot(latest: pl.DataFrame, family: str) -> Figure:
    """At 3 and 4 bits: one line per data type, at the block size where most types were run."""
    metric = LOSS if (latest["metric"] == LOSS).any() else headline_metric(latest)
    title = "Data types compared at 3 and 4 bits"
    caption = (
        "Same bit width and block size, one line per spec, drawn as the damage against the same "
        "checkpoint's 16-bit model (lower is better) when that was evaluated. The paper's order at "
        "4 bits, by perplexity: quantile >= float > int ~ dynamic exponent."
    )
    if metric is None:
        return Figure("dtypes", title, caption, note=NO_DATA)
    specs = specs_of(score(latest, metric)).filter(pl.col("outlier_pct") == 0)
    values, ylabel = versus_baseline(latest, metric)
    fig, axes = new_figure(2)
    drawn = 0
    for ax, k in zip(axes, (3, 4), strict=True):
        at_k = specs.filter(pl.col("bits") == k)
        counts = {b: g["dtype"].n_unique() for (b,), g in at_k.group_by("block_size")}
        if not counts or max(counts.values()) < 2:
            empty_note(ax, f"{k}-bit: {NOT_TESTABLE}\n(fewer than two data types)")
            continue
        block = min(counts, key=lambda b: (-counts[b], math.inf if b is None else b))
        rows = at_k.filter(pl.col("block_size").is_null() if block is None else pl.col("block_size") == block)
        seen: dict[str, int] = {}  # several specs of one type (fp4e2, fp4e3) differ by line style
        for r in rows.sort("mean_score", descending=True).iter_rows(named=True):
            pts = values.filter(pl.col("quant") == r["quant"]).sort("total_bits")
            style = ("-", "--", ":", "-.")[seen.setdefault(r["dtype"], 0) % 4]
            seen[r["dtype"]] += 1
            color = DTYPE_COLORS.get(r["dtype"], "#444")
            ax.plot(
                pts["total_bits"], pts["y"], marker="o", ls=style, color=color, lw=2, ms=5, label=r["quant"]
            )
        drawn += 1
        ax.set_xscale("log")
        ax.set_title(f"{k}-bit, block {'per tensor' if block is None else int(block)}", fontsize=12)
        ax.set_xlabel(TOTAL_BITS, fontsize=11)
        ax.set_ylabel(ylabel, fontsize=11)
        ax.legend(fontsize=9)
    if not drawn:
        return Figure("dtypes", title, caption, note=NOT_TESTABLE)
    fig.suptitle(f"Data types: {family}", fontsize=13)
    return Figure("dtypes", title, caption, png(fig))


def block_plot(latest: pl.DataFrame, family: str) -> Figure:
    """Metric vs block size per bit width (one data type), averaged over the sizes every spec shares."""
    metric = headline_metric(latest)
    title = "Block size against bits"
    caption = (
        "One line per bit width for the data type with the most block sizes; the value is the mean "
        "over the model sizes evaluated at every spec shown. Tick labels give the cost of the fp16 "
        "absmax per block in bits per parameter (16/B). The paper: blocks of 64-128 are worth it at "
        "3-5 bits, and change nothing at 6-8 bits."
    )
    if metric is None:
        return Figure("blocks", title, caption, note=NO_DATA)
    scored = score(latest, metric)
    specs = specs_of(scored).filter(pl.col("outlier_pct") == 0)
    variety = specs.group_by("dtype", "bits").agg(pl.col("block_size").n_unique().alias("n"))
    variety = variety.filter(pl.col("n") >= 2)
    if variety.height == 0:
        return Figure(
            "blocks", title, caption, note=f"{NOT_TESTABLE} (one block size per data type and width)"
        )
    dtype = (
        variety.group_by("dtype")
        .agg(pl.col("n").sum())
        .sort(["n", "dtype"], descending=[True, False])["dtype"][0]
    )
    chosen = specs.filter(
        pl.col("dtype") == dtype,
        pl.col("bits").is_in(variety.filter(pl.col("dtype") == dtype)["bits"].to_list()),
    )
    pts = scored.filter(pl.col("quant").is_in(chosen["quant"].to_list()))
    common = (
        pts.group_by("n_params")
        .agg(pl.col("quant").n_unique().alias("n"))
        .filter(pl.col("n") == chosen.height)
    )
    if common.height == 0:
        return Figure(
            "blocks", title, caption, note=f"{NO_DATA} (no model size evaluated at every block size)"
        )
    means = (
        pts.filter(pl.col("n_params").is_in(common["n_params"].to_list()))
        .group_by("quant")
        .agg(pl.col("value").mean())
    )
    table = chosen.join(means, on="quant")
    tensor = 2.0 * max(float(table["block_size"].max() or 64), 64)  # where "per tensor" is drawn
    fig, (ax,) = new_figure(1, height=5.0)
    for (k,), g in table.sort("bits").group_by("bits", maintain_order=True):
        g = g.with_columns(x=pl.col("block_size").fill_null(tensor)).sort("x")
        ax.plot(g["x"], g["value"], "o-", color=bit_color(k), lw=2, ms=6, label=f"{dtype}{k}")
    ticks = sorted({float(b) for b in table["block_size"].drop_nulls()})
    labels = [f"{int(b)}\n+{16 / b:.2g} b/p" for b in ticks]
    if table["block_size"].null_count():
        ticks, labels = [*ticks, tensor], [*labels, "per\ntensor"]
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, labels)
    ax.minorticks_off()
    ax.set_xlabel("Block size B (values per fp16 absmax; smaller costs more bits per parameter)", fontsize=11)
    ax.set_ylabel(f"{metric_label(metric)}\n(mean over {common.height} model sizes)", fontsize=11)
    ax.legend(title="bit width", fontsize=9)
    ax.set_title(f"Block size: {family}, {dtype}", fontsize=12)
    return Figure("blocks", title, caption, png(fig))
