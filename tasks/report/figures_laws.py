"""Figures of the fitted laws: the threshold law with S*, quantization damage across training, and
the extrapolation checks. Curves come from the fit (its long table or its parameters); points
are the measured ones (the table's point rows). Only `ok` entries are drawn, and only when the
numbers a curve needs are finite (law/fitdoc.py): any other entry is left to the tables, which
say why it is not usable."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from kbitlaw.law.claims.specs import best_per_bits
from kbitlaw.law.fitdoc import FitDocument, describe, interval, number, text, usable
from kbitlaw.law.numerics.stats import NO_DATA, NOT_TESTABLE, score
from kbitlaw.quant.spec import QuantSpec
from kbitlaw.report.figures import (
    TOTAL_BITS,
    Figure,
    bit_color,
    empty_note,
    memory_axis,
    new_figure,
    png,
)
from kbitlaw.vocab import BASELINES, MEAN_ACC

SPEC_COLORS = ("#1f77b4", "#444444", "#d62728", "#2ca02c")


def family_entries(fit: FitDocument, section: str, family: str) -> list[dict]:
    return [e for e in fit.entries(section) if e.get("family") == family]


def drawable(entry: dict, *names: str) -> bool:
    """Usable (status ok) and every named number finite: only then can its curve be drawn."""
    return usable(entry) and all(number(entry.get(n)) is not None for n in names)


def not_drawn_note(entries: list[dict], what: str, limit: int = 2) -> str:
    """Why nothing is drawn: no entry at all, or each entry's status in words (the first few)."""
    if not entries:
        return f"{NO_DATA} (no {what})"
    said = "; ".join(
        f"{text(e.get('quant') or e.get('scheme'), '?')}: {describe(e)}" for e in entries[:limit]
    )
    more = f"; {len(entries) - limit} more in the table below" if len(entries) > limit else ""
    return f"no usable {what}: {said}{more}"


def threshold_specs(latest: pl.DataFrame, fit: FitDocument, family: str) -> list[dict]:
    """Up to four drawable threshold fits on mean accuracy: the recommended spec, the 16-bit
    baseline, the best 3-bit spec, then the best 8-bit one."""
    fits = {
        e["quant"]: e
        for e in family_entries(fit, "threshold", family)
        if e.get("metric") == MEAN_ACC and isinstance(e.get("quant"), str) and drawable(e, "s_star_bits")
    }
    best = best_per_bits(score(latest, MEAN_ACC)) if (latest["metric"] == MEAN_ACC).any() else {}
    wanted = [fit.recommendation.get("quant"), *BASELINES, best.get(3), best.get(8)]
    chosen: list[str] = []
    for q in wanted:
        if isinstance(q, str) and q in fits and q not in chosen:
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
    fit = FitDocument.of(doc)
    entries = threshold_specs(latest, fit, family)
    if not entries:
        on_acc = [e for e in family_entries(fit, "threshold", family) if e.get("metric") == MEAN_ACC]
        return Figure(
            "threshold", title, caption, note=not_drawn_note(on_acc, "threshold fit on mean accuracy")
        )
    fig, (ax,) = new_figure(1, height=5.6)
    pts = latest.filter(pl.col("metric") == MEAN_ACC)
    shown: list[float | None] = []  # S* and its interval ends, kept in view near the data
    for color, e in zip(SPEC_COLORS, entries, strict=False):
        q = e["quant"]
        obs = pts.filter(pl.col("quant") == q).sort("total_bits")
        curve = table.filter(
            pl.col("section") == "fit",
            pl.col("law") == "threshold",
            pl.col("family") == family,
            pl.col("quant") == q,
            pl.col("metric") == MEAN_ACC,
        ).sort("total_bits")
        s_star, ci = number(e["s_star_bits"]), interval(e.get("ci"))
        label = f"{q}: S* = {s_star:.3g} bits" + (
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
        shown += [s_star, *ci]
        if s_star > 0:
            ax.axvline(s_star, color=color, ls="--", lw=1.2)
        if None not in ci and 0 < ci[0] < ci[1]:
            ax.axvspan(ci[0], ci[1], color=color, alpha=0.08, lw=0)
        chance = number(e.get("r_chance"))
        if chance is not None and 0 <= chance <= 1:  # an accuracy (another number would rescale the axis)
            ax.axhline(chance, color=color, ls=":", lw=1)
    ax.set_xscale("log")
    log_range(ax, pts["total_bits"], *shown)
    ax.set_xlabel(TOTAL_BITS, fontsize=11)
    ax.set_ylabel("Mean zero-shot accuracy", fontsize=11)
    memory_axis(ax)
    ax.legend(fontsize=9, loc="upper left")
    ax.set_title(f"Critical size: {family}", fontsize=12)
    return Figure("threshold", title, caption, png(fig))


# -- damage across training -------------------------------------------------------------------------


def damage_law(e: dict, d: np.ndarray, n: float, k: float) -> np.ndarray:
    """dL from a damage entry's parameters; an unidentified exponent (null) folds into C (term 1).
    The entry is drawable (damage_drawable): C is a finite positive number."""
    beta, alpha, gamma = (number(e.get(p)) for p in ("beta", "alpha", "gamma"))
    with np.errstate(all="ignore"):  # a huge C or exponent overflows to inf: not drawn, not an error
        out = number(e["C"]) * d ** (beta or 0.0) / np.float64(n) ** (alpha or 0.0)
        if gamma is None:
            return out
        return out / np.float64(k) ** gamma if e.get("form") == "power" else out * np.exp(-k / gamma)


def damage_drawable(e: dict) -> bool:
    """An ok damage entry whose curve can be drawn: C > 0 (a log axis), a known form and scheme,
    and a positive gamma where the exponential form divides by it."""
    C, gamma = number(e.get("C")), number(e.get("gamma"))
    return (
        drawable(e, "C")
        and C > 0
        and e.get("form") in ("power", "exponential")
        and isinstance(e.get("scheme"), str)
        and not (e.get("form") == "exponential" and gamma is not None and gamma <= 0)
    )


def scheme_of(quant: object) -> str | None:
    """A spec's scheme (`nvfp4` -> `fp<k>-b16-se4m3`), None for anything that is not a spec."""
    try:
        return QuantSpec.parse(quant).scheme if isinstance(quant, str) else None
    except ValueError:
        return None


def damage_entries(fit: FitDocument, family: str, preferred: str | None) -> list[dict]:
    """Up to two schemes, one fit each (the form with the smaller held-out error): the scheme of
    the recommended spec first, then the one with the most points."""
    ok = [e for e in family_entries(fit, "damage", family) if damage_drawable(e)]
    by_scheme: dict[str, dict] = {}
    for e in sorted(ok, key=lambda e: e["form"] != "power"):  # the power form wins ties
        kept = by_scheme.get(e["scheme"])
        if kept is None or (e.get("heldout_better") is True and kept.get("heldout_better") is not True):
            by_scheme[e["scheme"]] = e
    scheme = scheme_of(preferred)
    order = sorted(
        by_scheme.values(),
        key=lambda e: (e["scheme"] != scheme, -(number(e.get("n_points")) or 0), e["scheme"]),
    )
    return order[:2]


def log_range(ax, data: pl.Series, *extra: float | None, decades: float = 3.0) -> None:
    """Limit a log x axis to the data and the extra values (S*, its interval) within `decades` of
    them: a value of a broken document (an interval end at 1e300) must not squash the points to a
    dot, while an S* a little beyond the measured sizes stays in view."""
    pts = [float(v) for v in data.to_numpy() if np.isfinite(v) and v > 0]
    if not pts:
        return
    lo, hi = min(pts), max(pts)
    near = [v for v in extra if v is not None and lo / 10**decades <= v <= hi * 10**decades]
    ax.set_xlim(min([lo, *near]) / 1.5, max([hi, *near]) * 1.5)


def damage_plot(table: pl.DataFrame, doc: dict, family: str) -> Figure:
    """Observed dL vs training tokens per bit width with the fitted damage law."""
    title = "Quantization damage versus training tokens"
    caption = (
        "dL = loss of the quantized checkpoint minus its 16-bit loss. Filled points and lines: the "
        "largest model with several checkpoints, and the fitted law for it; faint points: other sizes. "
        "Ouyang et al.: damage grows with tokens (~D^0.53) and falls steeply with bits."
    )
    fit = FitDocument.of(doc)
    entries = damage_entries(fit, family, fit.recommendation.get("quant"))
    if not entries:
        mine = family_entries(fit, "damage", family)
        note = NOT_TESTABLE if not mine else not_drawn_note(mine, "damage law")
        return Figure("damage", title, caption, note=note)
    fig, axes = new_figure(len(entries), height=5.2)
    for ax, e in zip(axes, entries, strict=True):
        rows = table.filter(
            pl.col("section") == "damage", pl.col("law") == f"damage_{e['form']}", pl.col("family") == family
        )
        schemes = {q: scheme_of(q) for q in rows["quant"].unique().to_list()}
        obs = rows.filter(pl.col("quant").replace_strict(schemes, return_dtype=pl.String) == e["scheme"])
        obs = obs.filter(pl.col("value") > 0, pl.col("bits").is_not_null())
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
            curve = damage_law(e, d_grid, size, float(k))
            ax.plot(
                d_grid,
                np.where(np.isfinite(curve), curve, np.nan),
                color=bit_color(k),
                lw=2,
                label=f"{k}-bit",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        values = obs["value"].to_numpy()  # the observed damage decides the y axis, not a wild curve
        ax.set_ylim(values.min() / 3, values.max() * 3)
        ax.set_xlabel("Training tokens seen (log scale)", fontsize=11)
        ax.set_ylabel("Damage dL (nats/token, log scale)", fontsize=11)
        beta = "n/a" if number(e.get("beta")) is None else f"{number(e['beta']):.2f}"
        ax.set_title(f"{e['scheme']}, {e['form']} form, beta = {beta}; N = {size:.3g}", fontsize=11)
        ax.legend(fontsize=9, title="bit width")
    return Figure("damage", title, caption, png(fig))


# -- extrapolation checks --------------------------------------------------------------------------


EXTRAPOLATION_PANELS = (  # law prefix, panel title, quantity with unit, log axes
    ("threshold", "Threshold law", "accuracy", False),
    ("power_law", "Loss power law", "loss (nats/token)", False),
    ("damage", "Damage laws", "damage dL (nats/token)", True),
)


def extrapolation_checks(fit: FitDocument, family: str) -> list[dict]:
    """The family's ok extrapolation checks with a law name and finite predicted and observed
    values (what a point on the plot needs)."""
    return [
        c
        for c in family_entries(fit, "extrapolation", family)
        if isinstance(c.get("law"), str) and drawable(c, "predicted", "observed")
    ]


def axis_span(values: list[float], logs: bool) -> tuple[float, float]:
    """The diagonal's extent: the values with a margin (a tenth of a decade each side on log axes)."""
    lo_v, hi_v = min(values), max(values)
    if logs and lo_v > 0:
        span = lo_v / 10**0.1, hi_v * 10**0.1
    else:
        pad = 0.05 * ((hi_v - lo_v) or abs(hi_v) or 1.0)
        span = lo_v - pad, hi_v + pad
    # values near the ends of the float range overflow the margin: no margin then
    return span if all(math.isfinite(v) for v in span) else (lo_v, hi_v)


def extrapolation_plot(doc: dict, family: str) -> Figure:
    """Predicted vs observed for the held-out point of each law, with the prediction's interval."""
    title = "Extrapolation checks"
    caption = (
        "Each law is refit without its largest model (damage: without the latest checkpoint) and "
        "predicts it. On the diagonal: a perfect prediction; bars: the 90% interval; red: flagged "
        "(the observation lies outside the interval widened by its own noise)."
    )
    checks = extrapolation_checks(FitDocument.of(doc), family)
    panels = [p for p in EXTRAPOLATION_PANELS if any(c["law"].startswith(p[0]) for c in checks)]
    if not panels:
        return Figure("extrapolation", title, caption, note=f"{NO_DATA} (no law had a size to hold out)")
    fig, axes = new_figure(len(panels), height=4.6)
    for ax, (law, label, quantity, logs) in zip(axes, panels, strict=True):
        group = [c for c in checks if c["law"].startswith(law)]
        values = [number(c[v]) for c in group for v in ("observed", "predicted")]
        logs = logs and min(values) > 0  # a log axis only for positive values
        for flagged, color, marker in ((False, "#1f77b4", "o"), (True, "#d62728", "X")):
            sel = [c for c in group if (c.get("flagged") is True) == flagged]
            if not sel:
                continue
            obs = np.array([number(c["observed"]) for c in sel], dtype=float)
            pred = np.array([number(c["predicted"]) for c in sel], dtype=float)
            ends = np.array([interval(c.get("ci")) for c in sel], dtype=float)  # None -> nan
            lo = np.where(np.isfinite(ends[:, 0]), ends[:, 0], pred)
            hi = np.where(np.isfinite(ends[:, 1]), ends[:, 1], pred)
            with np.errstate(all="ignore"):
                yerr = np.nan_to_num(np.vstack([pred - lo, hi - pred]).clip(0, None), posinf=0.0)
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
        span = axis_span(values, logs)
        ax.plot(span, span, color="#888", lw=1, ls="--", label="predicted = observed")
        if logs:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlim(*span)
        ax.set_ylim(*span)  # the points decide the axes; an interval beyond them is clipped
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
