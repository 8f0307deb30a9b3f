"""Figures of the joint law L(N, D, spec) = E + A/N^alpha + B/D^beta + dL (law/joint/law.py): where the
family is heading (the 16-bit loss per size over training tokens, and the damage of the best 4- and
3-bit specs at the largest size), and its running check (past predictions against what came in).
Curves and bands are the fit's "joint" rows of the long table; points are the observed losses."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from kbitlaw.law.fitdoc import FitDocument, entries, interval, joint_law_for, number, status, usable
from kbitlaw.law.numerics.stats import NO_DATA
from kbitlaw.report.figures import Figure, bit_color, empty_note, new_figure, png
from kbitlaw.vocab import BASELINES

TOKENS_LABEL = "Training tokens seen (log scale)"


def joint_entry(doc: dict, family: str) -> dict | None:
    """The fit document's joint-law entry for a family (`joint_law` is a list, one per family)."""
    return joint_law_for(doc, family)


def level_of(doc: dict) -> float:
    return FitDocument.of(doc).level


def running_checks(entry: dict | None, family: str) -> list[dict]:
    """The joint law's running-check entries of the family (a malformed list reads as empty)."""
    found = entries(entry, "running_check") if isinstance(entry, dict) else []
    return [c for c in found if c.get("family", family) == family]


def joint_rows(table: pl.DataFrame, family: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The joint law's prediction rows ("fit") and observed losses of a family."""
    if "law" not in table.columns or table.height == 0:
        return table.clear(), table.clear()
    rows = table.filter(pl.col("law") == "joint", pl.col("family") == family)
    return rows.filter(pl.col("section") == "fit"), rows.filter(pl.col("section") == "observed")


def sixteen_bit_quant(quants: list[str]) -> str | None:
    return next((q for q in BASELINES if q in quants), None)


def quantized_specs(fit: pl.DataFrame, size: float, base: str, d_last: float, preferred: str | None) -> list:
    """Up to three quantized specs at one size: the recommended one, then the best 4-bit and the
    best 3-bit spec (lowest predicted loss at the size's latest checkpoint)."""
    at = fit.filter(pl.col("n_params") == size, pl.col("quant") != base, pl.col("bits") < 16)
    if at.height == 0:
        return []
    near = (
        at.with_columns(gap=(pl.col("tokens_seen").log() - np.log(d_last)).abs())
        .sort("gap")
        .group_by("quant", maintain_order=True)
        .first()
    )
    best = {
        int(r["bits"]): r["quant"]
        for r in near.sort("fitted", "quant")
        .group_by("bits", maintain_order=True)
        .first()
        .iter_rows(named=True)
    }
    chosen = [q for q in (preferred, best.get(4), best.get(3)) if q is not None and q in set(near["quant"])]
    return list(dict.fromkeys(chosen))[:3]


def nearest_size(n: pl.Series, sizes: list[float]) -> pl.Series:
    """Each n_params mapped to the closest fitted size (a size group's median, law/joint/law.py)."""
    grid = np.log(np.asarray(sizes, float))
    idx = np.abs(np.log(n.to_numpy().astype(float))[:, None] - grid[None, :]).argmin(axis=1)
    return pl.Series("size", np.asarray(sizes, float)[idx], dtype=pl.Float64)


def split_at(x: np.ndarray, last: float) -> tuple[np.ndarray, np.ndarray]:
    """Masks of a grid up to the latest checkpoint, and from the grid point before it on (so the
    dashed continuation joins the solid line)."""
    seen = x <= last * (1 + 1e-9)
    ahead = ~seen
    if ahead.any() and seen.any():
        ahead[np.flatnonzero(seen)[-1]] = True
    return seen, ahead


def tokens_axis(ax) -> None:
    """Log tokens on x; minor ticks unlabelled (their labels collide over a decade or two)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(TOKENS_LABEL, fontsize=11)


def observed_key(ax) -> None:
    """Legend entries for what the line styles and points mean."""
    ax.plot([], [], "-", color="#666", lw=2, label="law, up to the latest checkpoint")
    ax.plot([], [], "--", color="#666", lw=2, label="law, beyond it")
    ax.scatter([], [], color="#666", s=26, label="observed")


def heading_plot(table: pl.DataFrame, doc: dict, family: str) -> Figure:
    """Left: the 16-bit loss over tokens per size (law, band, observed points, dashed beyond the
    latest checkpoint). Right: the predicted damage over tokens at the largest size for a few specs."""
    level = level_of(doc)
    pct = f"{level:.0%}"
    title = "Where this family is heading"
    caption = (
        "Left: the 16-bit loss over training tokens, one colour per model size. Lines: the joint law "
        "L = E + A/N^alpha + B/D^beta fitted on every checkpoint; solid up to the size's latest "
        f"checkpoint, dashed beyond it (to its planned tokens or 4x its latest); bands: the {pct} "
        "prediction interval; points: the observed 16-bit losses. Right, at the largest size: the "
        "predicted damage dL (quantized minus 16-bit predicted loss) of the recommended spec and the "
        f"best 4- and 3-bit specs; bands: its {pct} interval (from the same bootstrap replicates of "
        "both parts); "
        "points: observed quantized minus observed 16-bit loss at the same checkpoint."
    )
    entry = joint_entry(doc, family)
    if entry is None:
        why = "the fit predates the joint law" if "joint_law" not in doc else f"no joint law for {family}"
        return Figure("heading", title, caption, note=f"{NO_DATA} ({why})")
    if not usable(entry):
        return Figure("heading", title, caption, note=f"not drawn: the joint law is {status(entry)} (below)")
    fit, obs = joint_rows(table, family)
    damage = (
        table.filter(pl.col("law") == "joint_damage", pl.col("family") == family)
        if "law" in table.columns and table.height
        else table.clear()
    )
    base = sixteen_bit_quant(fit["quant"].unique().to_list()) if fit.height else None
    if base is None:
        return Figure("heading", title, caption, note=f"{NO_DATA} (the fit has no 16-bit predictions)")
    fit16 = fit.filter(pl.col("quant") == base)
    sizes = sorted(fit16["n_params"].unique().to_list())
    obs = obs.with_columns(n_params=nearest_size(obs["n_params"], sizes)) if obs.height else obs
    obs16 = obs.filter(pl.col("quant") == base)
    last = dict(obs16.group_by("n_params").agg(pl.col("tokens_seen").max()).iter_rows())
    fig, (ax, ax_dmg) = new_figure(2, height=5.4)
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    for i, n in enumerate(sizes):
        color = cmap(0.9 * i / max(len(sizes) - 1, 1))
        curve = fit16.filter(pl.col("n_params") == n).sort("tokens_seen")
        x, y = curve["tokens_seen"].to_numpy(), curve["fitted"].to_numpy()
        seen, ahead = split_at(x, last.get(n, x.max()))
        ax.fill_between(x, curve["lo"].to_numpy(), curve["hi"].to_numpy(), color=color, alpha=0.18, lw=0)
        ax.plot(x[seen], y[seen], "-", color=color, lw=2)
        ax.annotate(
            f"N = {n:.3g}", (x[-1], y[-1]), xytext=(4, 0), textcoords="offset points", va="center", fontsize=9
        )
        ax.plot(x[ahead], y[ahead], "--", color=color, lw=2)
        pts = obs16.filter(pl.col("n_params") == n)
        ax.scatter(pts["tokens_seen"], pts["value"], color=color, s=26, zorder=4, edgecolor="white", lw=0.5)
    tokens_axis(ax)
    ax.set_ylabel(f"{base} loss (nats/token)", fontsize=11)
    ax.set_title(f"{family}: 16-bit loss; dashed = beyond the latest checkpoint", fontsize=11)
    lo, hi = ax.get_xlim()
    ax.set_xlim(lo, hi * (hi / lo) ** 0.18)  # room for the size labels at the lines' ends
    top = sizes[-1]
    recommended = FitDocument.of(doc).recommendation.get("quant")
    recommended = recommended if isinstance(recommended, str) else None
    specs = quantized_specs(fit, top, base, last.get(top, 0.0) or 1.0, recommended)
    if not specs:
        empty_note(ax_dmg, f"no quantized spec: {NO_DATA}")
    else:
        shown: list[float] = []  # the lines' and points' values: what the y axis must show
        ref = fit16.filter(pl.col("n_params") == top).sort("tokens_seen")
        ref_obs = obs16.filter(pl.col("n_params") == top).select("tokens_seen", ref=pl.col("value"))
        for q in specs:
            curve = fit.filter(pl.col("n_params") == top, pl.col("quant") == q).sort("tokens_seen")
            joined = curve.join(
                ref.select("tokens_seen", ref=pl.col("fitted")), on="tokens_seen", how="inner"
            )
            if joined.height == 0:
                continue
            x = joined["tokens_seen"].to_numpy()
            ref_y = joined["ref"].to_numpy()
            y = joined["fitted"].to_numpy() - ref_y
            color = bit_color(int(joined["bits"][0]))
            seen, ahead = split_at(x, last.get(top, x.max()))
            lo, hi = joined["lo"].to_numpy() - ref_y, joined["hi"].to_numpy() - ref_y
            own = damage.filter(pl.col("n_params") == top, pl.col("quant") == q).sort("tokens_seen")
            if own.height == len(x):  # the damage's own band (paired replicates), where the fit has it
                lo, hi = own["lo"].to_numpy(), own["hi"].to_numpy()
            ax_dmg.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)
            name = f"{q} ({int(joined['bits'][0])}-bit{', recommended' if q == recommended else ''})"
            shown += [float(v) for v in y if np.isfinite(v)]
            ax_dmg.plot(x[seen], y[seen], "-", color=color, lw=2, label=name)
            ax_dmg.plot(x[ahead], y[ahead], "--", color=color, lw=2)
            pts = obs.filter(pl.col("n_params") == top, pl.col("quant") == q).join(ref_obs, on="tokens_seen")
            observed = (pts["value"] - pts["ref"]).to_list()
            shown += [float(v) for v in observed if v is not None and np.isfinite(v)]
            ax_dmg.scatter(
                pts["tokens_seen"],
                pts["value"] - pts["ref"],
                color=color,
                s=26,
                zorder=4,
                edgecolor="white",
                lw=0.5,
            )
        if shown:  # a wild bootstrap band (e.g. a width or size far from the data) must not hide the lines
            low, high = min(0.0, min(shown)), max(shown)
            pad = 0.15 * (high - low or abs(high) or 1.0)
            ax_dmg.set_ylim(low - pad, high + 2 * pad)
        ax_dmg.axhline(0, color="#888", lw=1)
        tokens_axis(ax_dmg)
        ax_dmg.set_ylabel("Damage dL (nats/token)", fontsize=11)
        ax_dmg.set_title(f"Quantization damage at N = {top:.3g}", fontsize=11)
        observed_key(ax_dmg)
        ax_dmg.legend(fontsize=9, title="spec")
    return Figure("heading", title, caption, png(fig))


def running_check_plot(doc: dict, family: str) -> Figure:
    """Each running-check point in the order it came in: predicted minus observed loss, with the
    tolerance as a bar (a bar that crosses zero is a prediction that held)."""
    title = "Past predictions against what came in"
    caption = (
        "Each point: a checkpoint that arrived after a fit, at one spec, in the order they came in "
        "(dotted lines separate the fits that predicted them); y: what the earlier fit predicted minus "
        f"the observed loss. Bars: the tolerance (the {level_of(doc):.0%} prediction interval widened "
        "by the observation's own noise), relative to the observation: a bar across zero is a "
        "prediction that held; red: one that did not."
    )
    checks = [
        c
        for c in running_checks(joint_entry(doc, family), family)
        if usable(c) and number(c.get("predicted")) is not None and number(c.get("observed")) is not None
    ]
    if not checks:
        return Figure("running_check", title, caption, note="no checkpoint has arrived since the first fit")
    fig, (ax,) = new_figure(1, height=4.2)
    order = np.arange(1, len(checks) + 1)
    for flagged, color, marker in ((False, "#1f77b4", "o"), (True, "#d62728", "X")):
        sel = [i for i, c in enumerate(checks) if bool(c.get("flagged")) == flagged]
        if not sel:
            continue
        obs = np.array([number(checks[i]["observed"]) for i in sel], dtype=float)
        err = np.array([number(checks[i]["predicted"]) for i in sel], dtype=float) - obs
        tol = np.array([interval(checks[i].get("tolerance")) for i in sel], dtype=float) - obs[:, None]
        with np.errstate(all="ignore"):  # an unknown end (nan) or a huge one: no bar that way
            yerr = np.nan_to_num(np.vstack([err - tol[:, 0], tol[:, 1] - err]).clip(0, None), posinf=0.0)
        label = f"{'outside' if flagged else 'inside'} the tolerance ({len(sel)})"
        ax.errorbar(
            order[sel], err, yerr=yerr, fmt=marker, color=color, ms=5, capsize=2, alpha=0.8, label=label
        )
    batches = [c.get("predicted_by") for c in checks]
    for i in range(1, len(batches)):
        if batches[i] != batches[i - 1]:
            ax.axvline(i + 0.5, color="#888", lw=1, ls=":")
    errors = [number(c["predicted"]) - number(c["observed"]) for c in checks]
    low, high = min(0.0, *errors), max(0.0, *errors)
    pad = 0.5 * (high - low or 0.01)
    if not math.isfinite(low - pad) or not math.isfinite(high + pad):  # errors near the float range's end
        pad = 0.0
    if not all(math.isfinite(v) for v in (low, high)):
        low, high = -1.0, 1.0
    ax.set_ylim(low - pad, high + pad)  # the errors decide the axis; an unbounded bar is clipped
    ax.axhline(0, color="#444", lw=1)
    ax.set_xlabel("Check, in the order the checkpoints came in", fontsize=11)
    ax.set_ylabel("Predicted minus observed loss (nats)", fontsize=11)
    ax.set_title(f"{family}: running check of the joint law", fontsize=11)
    ax.legend(fontsize=9)
    return Figure("running_check", title, caption, png(fig))


def joint_figures(table: pl.DataFrame, doc: dict, family: str) -> list[Figure]:
    return [heading_plot(table, doc, family), running_check_plot(doc, family)]
