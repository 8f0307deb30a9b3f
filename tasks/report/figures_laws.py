"""Figures of the fitted laws: the threshold law with S*, quantization damage across training, and
the extrapolation checks. Curves come from the fit (its long table or its parameters); points
are the measured ones."""

from __future__ import annotations

import re

import numpy as np
import polars as pl

from kbitlaw.law.claims import best_per_bits
from kbitlaw.law.damage import scheme_column
from kbitlaw.law.stats import BASELINES, NO_DATA, NOT_TESTABLE, score
from kbitlaw.report.figures import (
    TOTAL_BITS,
    Figure,
    bit_color,
    empty_note,
    memory_axis,
    new_figure,
    png,
)

SPEC_COLORS = ("#1f77b4", "#444444", "#d62728", "#2ca02c")


def threshold_specs(latest: pl.DataFrame, doc: dict, family: str) -> list[dict]:
    """Up to four ok threshold fits on mean accuracy: the recommended spec, the 16-bit baseline,
    the best 3-bit spec, then the best 8-bit one."""
    fits = {
        e["quant"]: e
        for e in doc.get("threshold", [])
        if e.get("family") == family and e.get("metric") == "mean_acc" and e.get("status") == "ok"
    }
    best = best_per_bits(score(latest, "mean_acc")) if (latest["metric"] == "mean_acc").any() else {}
    wanted = [(doc.get("recommendation") or {}).get("quant"), *BASELINES, best.get(3), best.get(8)]
    chosen: list[str] = []
    for q in wanted:
        if q in fits and q not in chosen:
            chosen.append(q)
    return [fits[q] for q in chosen[:4]]


def threshold_plot(latest: pl.DataFrame, table: pl.DataFrame, doc: dict, family: str) -> Figure:
    """Mean accuracy vs total bits with the fitted threshold law, its band and S* with its interval."""
    title = "Threshold law and the critical size S*"
    caption = (
        "Accuracy rises from chance to its ceiling around a critical size S* (in total model bits). "
        "Lines: the fitted threshold law; bands: its 90% bootstrap band; vertical line and shading: S* "
        "and its 90% interval; dotted: chance."
    )
    entries = threshold_specs(latest, doc, family)
    if not entries:
        return Figure("threshold", title, caption, note=f"{NO_DATA} (no threshold fit on mean accuracy)")
    fig, (ax,) = new_figure(1, height=5.6)
    pts = latest.filter(pl.col("metric") == "mean_acc")
    for color, e in zip(SPEC_COLORS, entries, strict=False):
        q = e["quant"]
        obs = pts.filter(pl.col("quant") == q).sort("total_bits")
        curve = table.filter(
            pl.col("section") == "fit",
            pl.col("law") == "threshold",
            pl.col("family") == family,
            pl.col("quant") == q,
            pl.col("metric") == "mean_acc",
        ).sort("total_bits")
        ci = e["ci"]
        label = f"{q}: S* = {e['s_star_bits']:.3g} bits" + (
            f" [{ci[0]:.3g}, {ci[1]:.3g}]" if None not in ci else " (interval unknown)"
        )
        ax.errorbar(
            obs["total_bits"],
            obs["value"],
            yerr=obs["stderr"].fill_null(0).fill_nan(0),
            fmt="o",
            color=color,
            ms=5,
            capsize=2,
        )
        ax.plot(curve["total_bits"], curve["fitted"], "-", color=color, lw=2, label=label)
        ax.fill_between(curve["total_bits"], curve["lo"], curve["hi"], color=color, alpha=0.15, lw=0)
        ax.axvline(e["s_star_bits"], color=color, ls="--", lw=1.2)
        if None not in ci:
            ax.axvspan(ci[0], ci[1], color=color, alpha=0.08, lw=0)
        if e.get("r_chance") is not None:
            ax.axhline(e["r_chance"], color=color, ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(TOTAL_BITS, fontsize=11)
    ax.set_ylabel("Mean zero-shot accuracy", fontsize=11)
    memory_axis(ax)
    ax.legend(fontsize=9, loc="upper left")
    ax.set_title(f"Critical size: {family}", fontsize=12)
    return Figure("threshold", title, caption, png(fig))


# -- damage across training -------------------------------------------------------------------------


def damage_law(e: dict, d: np.ndarray, n: float, k: float) -> np.ndarray:
    """dL from a damage entry's parameters; an unidentified exponent (null) folds into C (term 1)."""
    beta, alpha, gamma = (e.get(p) for p in ("beta", "alpha", "gamma"))
    out = e["C"] * d ** (beta or 0.0) / n ** (alpha or 0.0)
    if gamma is None:
        return out
    return out / k**gamma if e["form"] == "power" else out * np.exp(-k / gamma)


def damage_entries(doc: dict, family: str, preferred: str | None) -> list[dict]:
    """Up to two schemes, one fit each (the form with the smaller held-out error): the scheme of
    the recommended spec first, then the one with the most points."""
    ok = [e for e in doc.get("damage", []) if e.get("family") == family and e.get("status") == "ok"]
    by_scheme: dict[str, dict] = {}
    for e in sorted(ok, key=lambda e: e["form"] != "power"):  # the power form wins ties
        kept = by_scheme.get(e["scheme"])
        if kept is None or (e.get("heldout_better") and not kept.get("heldout_better")):
            by_scheme[e["scheme"]] = e
    scheme = None if preferred is None else re.sub(r"^([a-z]+?)\d+(?:e\d+)?", r"\1<k>", preferred)
    order = sorted(by_scheme.values(), key=lambda e: (e["scheme"] != scheme, -e["n_points"], e["scheme"]))
    return order[:2]


def damage_plot(table: pl.DataFrame, doc: dict, family: str) -> Figure:
    """Observed dL vs training tokens per bit width with the fitted damage law."""
    title = "Quantization damage versus training tokens"
    caption = (
        "dL = loss of the quantized checkpoint minus its 16-bit loss. Filled points and lines: the "
        "largest model with several checkpoints, and the fitted law for it; faint points: other sizes. "
        "Ouyang et al.: damage grows with tokens (~D^0.53) and falls steeply with bits."
    )
    entries = damage_entries(doc, family, (doc.get("recommendation") or {}).get("quant"))
    if not entries:
        note = NOT_TESTABLE if not doc.get("damage") else f"{NO_DATA} (no damage law could be fitted)"
        return Figure("damage", title, caption, note=note)
    fig, axes = new_figure(len(entries), height=5.2)
    for ax, e in zip(axes, entries, strict=True):
        rows = table.filter(
            pl.col("section") == "damage", pl.col("law") == f"damage_{e['form']}", pl.col("family") == family
        )
        obs = rows.filter(scheme_column(rows["quant"]) == e["scheme"])
        obs = obs.filter(pl.col("value") > 0)
        sizes = (
            obs.group_by("n_params").agg(pl.col("tokens_seen").n_unique().alias("n")).filter(pl.col("n") >= 2)
        )
        if obs.height == 0 or sizes.height == 0:
            empty_note(ax, f"{e['scheme']}: {NO_DATA}")
            continue
        size = float(sizes["n_params"].max())
        d_grid = np.geomspace(obs["tokens_seen"].min(), obs["tokens_seen"].max() * 2, 50)
        for (k,), g in obs.sort("bits").group_by("bits", maintain_order=True):
            main = g.filter(pl.col("n_params") == size)
            rest = g.filter(pl.col("n_params") != size)
            ax.scatter(rest["tokens_seen"], rest["value"], color=bit_color(k), alpha=0.25, s=14)
            ax.scatter(main["tokens_seen"], main["value"], color=bit_color(k), s=36, zorder=4)
            ax.plot(d_grid, damage_law(e, d_grid, size, float(k)), color=bit_color(k), lw=2, label=f"{k}-bit")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("Training tokens seen (log scale)", fontsize=11)
        ax.set_ylabel("Damage dL (nats/token, log scale)", fontsize=11)
        beta = "n/a" if e["beta"] is None else f"{e['beta']:.2f}"
        ax.set_title(f"{e['scheme']}, {e['form']} form, beta = {beta}; N = {size:.3g}", fontsize=11)
        ax.legend(fontsize=9, title="bit width")
    return Figure("damage", title, caption, png(fig))


# -- extrapolation checks --------------------------------------------------------------------------


EXTRAPOLATION_PANELS = (  # law prefix, panel title, quantity with unit, log axes
    ("threshold", "Threshold law", "accuracy", False),
    ("power_law", "Loss power law", "loss (nats/token)", False),
    ("damage", "Damage laws", "damage dL (nats/token)", True),
)


def extrapolation_plot(doc: dict, family: str) -> Figure:
    """Predicted vs observed for the held-out point of each law, with the prediction's interval."""
    title = "Extrapolation checks"
    caption = (
        "Each law is refit without its largest model (damage: without the latest checkpoint) and "
        "predicts it. On the diagonal: a perfect prediction; bars: the 90% interval; red: flagged "
        "(the observation lies outside the interval widened by its own noise)."
    )
    checks = [
        c for c in doc.get("extrapolation", []) if c.get("family") == family and c.get("status") == "ok"
    ]
    panels = [p for p in EXTRAPOLATION_PANELS if any(c["law"].startswith(p[0]) for c in checks)]
    if not panels:
        return Figure("extrapolation", title, caption, note=f"{NO_DATA} (no law had a size to hold out)")
    fig, axes = new_figure(len(panels), height=4.6)
    for ax, (law, label, quantity, logs) in zip(axes, panels, strict=True):
        group = [c for c in checks if c["law"].startswith(law)]
        for flagged, color, marker in ((False, "#1f77b4", "o"), (True, "#d62728", "X")):
            sel = [c for c in group if bool(c["flagged"]) == flagged]
            if not sel:
                continue
            obs = np.array([c["observed"] for c in sel], dtype=float)
            pred = np.array([c["predicted"] for c in sel], dtype=float)
            lo = np.array(
                [c["ci"][0] if c["ci"][0] is not None else p for c, p in zip(sel, pred, strict=True)]
            )
            hi = np.array(
                [c["ci"][1] if c["ci"][1] is not None else p for c, p in zip(sel, pred, strict=True)]
            )
            yerr = np.vstack([np.clip(pred - lo, 0, None), np.clip(hi - pred, 0, None)])
            ax.errorbar(
                obs,
                pred,
                yerr=yerr,
                fmt=marker,
                color=color,
                ms=6,
                capsize=2,
                alpha=0.8,
                label=f"{'flagged' if flagged else 'within interval'} ({len(sel)})",
            )
        values = [v for c in group for v in (c["observed"], c["predicted"]) if v is not None]
        lo_v, hi_v = min(values), max(values)
        pad = (hi_v / lo_v) ** 0.1 if logs and lo_v > 0 else None
        span = (
            (lo_v / pad, hi_v * pad)
            if pad
            else (lo_v - 0.05 * (hi_v - lo_v or 1), hi_v + 0.05 * (hi_v - lo_v or 1))
        )
        ax.plot(span, span, color="#888", lw=1, ls="--", label="predicted = observed")
        if logs and lo_v > 0:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel(f"Observed {quantity}", fontsize=11)
        ax.set_ylabel(f"Predicted {quantity}", fontsize=11)
        ax.set_title(label, fontsize=11)
        ax.legend(fontsize=9)
    return Figure("extrapolation", title, caption, png(fig))


def law_figures(latest: pl.DataFrame, table: pl.DataFrame, doc: dict, family: str) -> list[Figure]:
    return [
        threshold_plot(latest, table, doc, family),
        damage_plot(table, doc, family),
        extrapolation_plot(doc, family),
    ]
