"""The joint law as the fit document stores it for `kbitlaw predict`: each joint-law entry's `model`.

The law stage fits the joint law (law/joint/law.py) and writes, beside the entry's parameters and
intervals, everything a forward prediction needs, so that `predict` reads the law back instead of
refitting it (DESIGN.md: the fit document is the law stage's one output). Layout (version 2):

    model = {
      "version": 2,
      "surface": {"form": "chinchilla", "theta": [a, b, e, alpha, beta], "boot": [[...], ...],
                  "log_scale": s | null, "n_points": m}
               | {"form": "schedule", "theta": [a, b, e, alpha, beta, k], "boot": [[...], ...],
                  "log_scale": s | null, "n_points": m, "s2_ref": S2, "shape": [S1/D, S2/D],
                  "dropped": ["C"] | []},                                # law/joint/anneal.py
      "damage": {scheme: {"form": "power"|"exponential", "cols": [0, 1, ...],
                          "theta": [...], "boot": [[...], ...]}},       # free columns only
      "specs": {quant: {"scheme": str, "bits": k, "bits_per_param": bpp}},
      "memory": {"quantized_share": s, "unquantized": [slope, intercept] | null},
      "range": {"n_params": [min, max], "tokens": [min, max]},          # the fitted loss points
      "runs_in_progress": [{"checkpoint_id", "n_params", "tokens_seen", "tokens_planned",
                            "lr_area_planned": S1 | null, "lr_anneal_planned": S2 | null}],
    }

Version 1 (before the schedule form) had no `form`, `log_scale` or `n_points` and runs without the
planned areas: it still reads, as a Chinchilla surface whose runs' predictions carry no tolerance.

`theta` are the optimisers' own coordinates (chinchilla.THETA; damage.design's coefficients of the
free columns), not the entry's named parameters, so the rebuilt law predicts bit for bit what the
fitted one did (JSON floats round-trip exactly). A failed bootstrap replicate is a row of nulls
(json_safe writes NaN as null) and reads back as NaN. Only what predicting needs is kept: the
surface's objective and the damage fits' noise model (used by the held-out checks at fitting time)
are not stored; the surface's noise scale is, for the tolerance of a run's predicted end.

Reading is strict: `JointModel.from_dict` raises ModelError naming the first field that is not what
the layout says (a number outside its domain included), and never anything else, so a broken
document cannot crash a reader. `usable_part` then keeps only what the entry's statuses allow
(law/fitdoc.py): a quantized spec only when its scheme's damage law is ok; the others are listed
with their status and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import polars as pl

from kbitlaw.law import fitdoc
from kbitlaw.law.joint.anneal import AnnealSurface
from kbitlaw.law.joint.law import JointLaw
from kbitlaw.law.joint.model_fields import (
    ModelError,
    damage_model,
    number,
    obj,
    share,
    span,
    spec_info,
    surface_of,
    unquantized,
)
from kbitlaw.status import FAILED, NO_DATA, NOT_TESTABLE, OK, UNIDENTIFIED

MODEL_VERSION = 2
READS = (1, MODEL_VERSION)  # the versions from_dict reads
FINISHED = 1.01  # a plan within 1% of what was seen is a finished run (budgets round to batches)
GRAVITY = (FAILED, UNIDENTIFIED, NOT_TESTABLE, NO_DATA, OK)  # the gravest status of several first


@dataclass(frozen=True)
class Run:
    """A run still training: its latest checkpoint and the tokens it plans to reach."""

    checkpoint_id: str
    n_params: float
    tokens_seen: float
    tokens_planned: float
    lr_area_planned: float | None = None  # the areas at its planned end (schedule.py), if known
    lr_anneal_planned: float | None = None


@dataclass(frozen=True)
class JointModel:
    """A family's joint law with what predicting needs of its data."""

    law: JointLaw
    n_range: tuple[float, float]  # smallest and largest size fitted
    d_range: tuple[float, float]  # fewest and most tokens fitted
    runs: tuple[Run, ...] = ()

    @classmethod
    def of(cls, law: JointLaw, points: pl.DataFrame) -> JointModel:
        """The model of a law fitted on `points` (the family's loss points, law/joint/law.py)."""
        n, d = points["n_params"].cast(pl.Float64), points["tokens_seen"].cast(pl.Float64)
        return cls(
            law, (float(n.min()), float(n.max())), (float(d.min()), float(d.max())), in_progress(points)
        )

    def restricted(self, quants: set[str]) -> JointModel:
        """The same model predicting only the given specs (and the damage laws of their schemes)."""
        specs = {q: s for q, s in self.law.specs.items() if q in quants}
        damage = {k: m for k, m in self.law.damage.items() if any(s.scheme == k for s in specs.values())}
        return replace(self, law=replace(self.law, specs=specs, damage=damage))

    def to_dict(self) -> dict[str, Any]:
        """The `model` key of the joint-law entry (plain lists and floats; NaN stays NaN until
        the document's json_safe writes it as null)."""
        law = self.law
        return {
            "version": MODEL_VERSION,
            "surface": surface_dict(law.surface),
            "damage": {
                scheme: {
                    "form": m.form,
                    "cols": [int(c) for c in m.cols],
                    "theta": _floats(m.fit.theta),
                    "boot": _rows(m.fit.boot),
                }
                for scheme, m in sorted(law.damage.items())
            },
            "specs": {
                q: {"scheme": s.scheme, "bits": float(s.bits), "bits_per_param": float(s.bits_per_param)}
                for q, s in sorted(law.specs.items())
            },
            "memory": {
                "quantized_share": float(law.quantized_share),
                "unquantized": None if law.unquantized is None else _floats(law.unquantized),
            },
            "range": {"n_params": list(self.n_range), "tokens": list(self.d_range)},
            "runs_in_progress": [
                {
                    "checkpoint_id": r.checkpoint_id,
                    "n_params": r.n_params,
                    "tokens_seen": r.tokens_seen,
                    "tokens_planned": r.tokens_planned,
                    "lr_area_planned": r.lr_area_planned,
                    "lr_anneal_planned": r.lr_anneal_planned,
                }
                for r in self.runs
            ],
        }

    @classmethod
    def from_dict(cls, model: Any, family: str) -> JointModel:
        """Rebuild a stored model; ModelError naming the field if any part is unreadable."""
        if not isinstance(model, dict):
            raise ModelError("model: missing (the fit was made before models were stored: refit)")
        version = model.get("version")
        if isinstance(version, bool) or version not in READS:
            raise ModelError(f"model.version: {version!r}, this kbitlaw reads versions 1 and {MODEL_VERSION}")
        law = JointLaw(
            family=family,
            surface=surface_of(obj(model, "surface", "model"), version),
            damage={k: damage_model(k, v) for k, v in obj(model, "damage", "model").items()},
            specs={q: spec_info(q, v) for q, v in obj(model, "specs", "model").items()},
            quantized_share=share(obj(model, "memory", "model")),
            unquantized=unquantized(model["memory"].get("unquantized")),
        )
        ranges = obj(model, "range", "model")
        runs = model.get("runs_in_progress")
        if not isinstance(runs, list):
            raise ModelError("model.runs_in_progress: not a list")
        return cls(
            law,
            span(ranges.get("n_params"), "model.range.n_params"),
            span(ranges.get("tokens"), "model.range.tokens"),
            tuple(_run(r, f"model.runs_in_progress[{i}]") for i, r in enumerate(runs)),
        )


def in_progress(points: pl.DataFrame) -> tuple[Run, ...]:
    """Per size, its latest checkpoint when it plans more tokens than it has seen, smallest first."""
    if "tokens_planned" not in points.columns or points.height == 0:
        return ()
    by = "size" if "size" in points.columns else "n_params"
    latest = (
        points.sort("tokens_seen", descending=True)
        .group_by(by, maintain_order=True)
        .first()
        .filter(
            pl.col("tokens_planned").is_not_null(),
            pl.col("tokens_planned") > FINISHED * pl.col("tokens_seen"),
        )
        .sort("n_params")
    )
    return tuple(
        Run(
            str(r["checkpoint_id"]),
            float(r["n_params"]),
            float(r["tokens_seen"]),
            float(r["tokens_planned"]),
            *(_maybe(r.get(c)) for c in ("lr_area_planned", "lr_anneal_planned")),
        )
        for r in latest.iter_rows(named=True)
    )


def _maybe(v: Any) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


# -- what of it the statuses allow ------------------------------------------------------------------


def usable_part(model: JointModel, entry: dict, doc: Any) -> tuple[JointModel, list[dict]]:
    """The model restricted to the specs its fit-document entry allows (usable_specs), and the
    specs left out, each with its scheme, status and why. `doc`: the whole document, whose
    `damage` section says why a scheme has no damage law in the entry."""
    kept, left = usable_specs(model, entry, damage_reasons(doc, model.law.family))
    return model.restricted(kept), left


def damage_reasons(doc: Any, family: str) -> dict[str, tuple[str, str]]:
    """Per scheme of the family whose damage laws (the document's `damage` section) are none of
    them usable: (the gravest of their statuses, why in words, e.g. 'power form failed: ...;
    exponential form not identified: gamma')."""
    found: dict[str, list[dict]] = {}
    for e in fitdoc.entries(doc, "damage"):
        if e.get("family") == family and isinstance(e.get("scheme"), str):
            found.setdefault(e["scheme"], []).append(e)
    return {
        scheme: (
            min((fitdoc.status(e) for e in forms), key=GRAVITY.index),
            "; ".join(f"{fitdoc.text(e.get('form'), '?')} form {fitdoc.describe(e)}" for e in forms),
        )
        for scheme, forms in found.items()
        if not any(fitdoc.usable(e) for e in forms)
    }


def usable_specs(model: JointModel, entry: dict, reasons: dict) -> tuple[set[str], list[dict]]:
    """(the specs predict may use, the others each with its scheme, status and why): a quantized
    spec is used only when its scheme's damage law in the entry is ok, the entry's damage part as
    a whole is ok, and the model stores that law. A scheme the entry has no damage law for says
    why from `reasons` (damage_reasons)."""
    damage = entry.get("damage")
    schemes = {s["scheme"]: s for s in fitdoc.entries(damage, "schemes") if isinstance(s.get("scheme"), str)}
    kept, left = set(), []
    for quant, info in sorted(model.law.specs.items()):
        scheme = schemes.get(info.scheme)
        if info.bits >= 16:
            kept.add(quant)
            continue
        if scheme is None:  # the most specific reason first
            s, why = reasons.get(info.scheme) or (NO_DATA, "no damage law for its scheme")
        elif not fitdoc.usable(scheme):
            s, why = fitdoc.status(scheme), fitdoc.describe(scheme)
        elif not fitdoc.usable(damage):
            s, why = fitdoc.status(damage), f"the joint law's damage part: {fitdoc.describe(damage)}"
        elif info.scheme not in model.law.damage:
            s, why = NO_DATA, "its damage law is not in the stored model"
        else:
            kept.add(quant)
            continue
        left.append({"quant": quant, "scheme": info.scheme, "status": s, "reason": why})
    return kept, left


# -- writing ----------------------------------------------------------------------------------------


def surface_dict(surface) -> dict[str, Any]:
    """The stored surface: its form, coordinates and replicates, noise, and for the schedule form
    what turns its coordinates into a loss (law/joint/anneal.py)."""
    out = {
        "form": surface.form,
        "theta": _floats(surface.theta),
        "boot": _rows(surface.boot),
        "log_scale": float(surface.log_scale) if math.isfinite(surface.log_scale) else None,
        "n_points": int(surface.n_points),
    }
    if isinstance(surface, AnnealSurface):
        out |= {"s2_ref": surface.s2_ref, "shape": _floats(surface.shape), "dropped": list(surface.dropped)}
    return out


def _floats(v: Any) -> list[float]:
    return [float(x) for x in np.asarray(v, dtype=float).ravel()]


def _rows(m: np.ndarray) -> list[list[float]]:
    return np.asarray(m, dtype=float).tolist()


def _run(r: Any, where: str) -> Run:
    if not isinstance(r, dict) or not isinstance(r.get("checkpoint_id"), str):
        raise ModelError(f"{where}: not an object with a checkpoint_id")
    n, seen, planned = (
        number(r.get(k), f"{where}.{k}", positive=True) for k in ("n_params", "tokens_seen", "tokens_planned")
    )
    s1, s2 = (
        None if r.get(k) is None else number(r[k], f"{where}.{k}")
        for k in ("lr_area_planned", "lr_anneal_planned")
    )
    if (s1 is not None and s1 <= 0) or (s2 is not None and s2 < 0):
        raise ModelError(f"{where}: planned areas must be S1 > 0 and S2 >= 0, got {s1!r}, {s2!r}")
    return Run(r["checkpoint_id"], n, seen, planned, s1, s2)
