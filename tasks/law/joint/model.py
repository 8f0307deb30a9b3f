"""The joint law as the fit document stores it for `kbitlaw predict`: each joint-law entry's `model`.

The law stage fits the joint law (law/joint/law.py) and writes, beside the entry's parameters and
intervals, everything a forward prediction needs, so that `predict` reads the law back instead of
refitting it (DESIGN.md: the fit document is the law stage's one output). Layout (version 1):

    model = {
      "version": 1,
      "surface": {"theta": [a, b, e, alpha, beta], "boot": [[a, b, e, alpha, beta], ...]},
      "damage": {scheme: {"form": "power"|"exponential", "cols": [0, 1, ...],
                          "theta": [...], "boot": [[...], ...]}},       # free columns only
      "specs": {quant: {"scheme": str, "bits": k, "bits_per_param": bpp}},
      "memory": {"quantized_share": s, "unquantized": [slope, intercept] | null},
      "range": {"n_params": [min, max], "tokens": [min, max]},          # the fitted loss points
      "runs_in_progress": [{"checkpoint_id", "n_params", "tokens_seen", "tokens_planned"}],
    }

`theta` are the optimisers' own coordinates (chinchilla.THETA; damage.design's coefficients of the
free columns), not the entry's named parameters, so the rebuilt law predicts bit for bit what the
fitted one did (JSON floats round-trip exactly). A failed bootstrap replicate is a row of nulls
(json_safe writes NaN as null) and reads back as NaN. Only what predicting needs is kept: the
surface's objective and noise scale and the damage fits' noise model (used by the held-out checks
at fitting time) are not stored.

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
from kbitlaw.law.damage.design import FORMS
from kbitlaw.law.damage.design import PARAMS as DAMAGE_PARAMS
from kbitlaw.law.damage.fit import DamageFit
from kbitlaw.law.damage.law import DamageModel
from kbitlaw.law.joint.chinchilla import THETA, Surface
from kbitlaw.law.joint.law import JointLaw, SpecInfo
from kbitlaw.status import FAILED, NO_DATA, NOT_TESTABLE, OK, UNIDENTIFIED

MODEL_VERSION = 1
MAX_BITS = 64.0  # no spec stores more bits per weight than this: a larger value is corrupt
FINISHED = 1.01  # a plan within 1% of what was seen is a finished run (budgets round to batches)
GRAVITY = (FAILED, UNIDENTIFIED, NOT_TESTABLE, NO_DATA, OK)  # the gravest status of several first


class ModelError(ValueError):
    """The stored model cannot be read; the message names the field."""


@dataclass(frozen=True)
class Run:
    """A run still training: its latest checkpoint and the tokens it plans to reach."""

    checkpoint_id: str
    n_params: float
    tokens_seen: float
    tokens_planned: float


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
            "surface": {"theta": _floats(law.surface.theta), "boot": _rows(law.surface.boot)},
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
        if version != MODEL_VERSION:
            raise ModelError(f"model.version: {version!r}, this kbitlaw reads version {MODEL_VERSION}")
        surface = _dict(model, "surface", "model")
        theta = _vector(surface.get("theta"), len(THETA), "model.surface.theta")
        boot = _matrix(surface.get("boot"), len(THETA), "model.surface.boot")
        law = JointLaw(
            family=family,
            surface=Surface(theta, boot, objective=math.nan, n_points=0, warm=False),
            damage={k: _damage(k, v) for k, v in _dict(model, "damage", "model").items()},
            specs={q: _spec(q, v) for q, v in _dict(model, "specs", "model").items()},
            quantized_share=_share(_dict(model, "memory", "model")),
            unquantized=_unquantized(model["memory"].get("unquantized")),
        )
        ranges = _dict(model, "range", "model")
        runs = model.get("runs_in_progress")
        if not isinstance(runs, list):
            raise ModelError("model.runs_in_progress: not a list")
        return cls(
            law,
            _span(ranges.get("n_params"), "model.range.n_params"),
            _span(ranges.get("tokens"), "model.range.tokens"),
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
            str(r["checkpoint_id"]), float(r["n_params"]), float(r["tokens_seen"]), float(r["tokens_planned"])
        )
        for r in latest.iter_rows(named=True)
    )


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


def _floats(v: Any) -> list[float]:
    return [float(x) for x in np.asarray(v, dtype=float).ravel()]


def _rows(m: np.ndarray) -> list[list[float]]:
    return np.asarray(m, dtype=float).tolist()


# -- reading: each helper checks one field and names it when it is wrong ------------------------------


def _number(x: Any, where: str, *, positive: bool = False, at_most: float = math.inf) -> float:
    """A finite float (bools, strings, None, NaN and inf are not)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ModelError(f"{where}: {x!r} is not a finite number")
    if (positive and x <= 0) or x > at_most:
        bound = f"in (0, {at_most:g}]" if positive else f"at most {at_most:g}"
        raise ModelError(f"{where}: {x!r} is not {bound}")
    return float(x)


def _dict(parent: dict, key: str, where: str) -> dict:
    v = parent.get(key)
    if not isinstance(v, dict):
        raise ModelError(f"{where}.{key}: missing or not an object")
    return v


def _vector(x: Any, length: int, where: str) -> np.ndarray:
    if not isinstance(x, list) or len(x) != length:
        raise ModelError(f"{where}: not a list of {length} numbers")
    return np.array([_number(v, f"{where}[{i}]") for i, v in enumerate(x)], dtype=float)


def _matrix(x: Any, width: int, where: str) -> np.ndarray:
    """Bootstrap replicates [n_boot, width]; a null (or non-finite) value is a failed replicate."""
    if not isinstance(x, list) or not all(isinstance(r, list) and len(r) == width for r in x):
        raise ModelError(f"{where}: not a list of rows of {width} numbers")
    out = np.full((len(x), width), np.nan)
    for i, row in enumerate(x):
        for j, v in enumerate(row):
            if not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v):
                out[i, j] = v
    return out


def _damage(scheme: Any, v: Any) -> DamageModel:
    where = f"model.damage.{scheme}"
    if not isinstance(v, dict):
        raise ModelError(f"{where}: not an object")
    if v.get("form") not in FORMS:
        raise ModelError(f"{where}.form: {v.get('form')!r} is not one of {', '.join(FORMS)}")
    cols = v.get("cols")
    valid = range(len(DAMAGE_PARAMS))
    if (
        not isinstance(cols, list)
        or not cols
        or not all(isinstance(c, int) and not isinstance(c, bool) and c in valid for c in cols)
        or cols != sorted(set(cols))
        or 0 not in cols
    ):
        raise ModelError(f"{where}.cols: not increasing column indices from 0 (of {len(valid)})")
    theta = _vector(v.get("theta"), len(cols), f"{where}.theta")
    boot = _matrix(v.get("boot"), len(cols), f"{where}.boot")
    # predicting reads only theta and boot: the noise model is not stored (NaN, 0 dof)
    return DamageModel(str(scheme), v["form"], np.array(cols), DamageFit(theta, boot, math.nan, math.nan, 0))


def _spec(quant: Any, v: Any) -> SpecInfo:
    where = f"model.specs.{quant}"
    if not isinstance(v, dict) or not isinstance(v.get("scheme"), str):
        raise ModelError(f"{where}: not an object with a scheme")
    bits = _number(v.get("bits"), f"{where}.bits", positive=True, at_most=MAX_BITS)
    bpp = _number(v.get("bits_per_param"), f"{where}.bits_per_param", positive=True, at_most=MAX_BITS)
    return SpecInfo(v["scheme"], bits, bpp)


def _share(memory: dict) -> float:
    share = _number(memory.get("quantized_share"), "model.memory.quantized_share", positive=True, at_most=1.0)
    return share


def _unquantized(v: Any) -> tuple[float, float] | None:
    if v is None:
        return None
    slope, intercept = _vector(v, 2, "model.memory.unquantized")
    return float(slope), float(intercept)


def _span(x: Any, where: str) -> tuple[float, float]:
    if not isinstance(x, list) or len(x) != 2:
        raise ModelError(f"{where}: not a [min, max] pair")
    lo, hi = (_number(v, where, positive=True) for v in x)
    if lo > hi:
        raise ModelError(f"{where}: min {lo:g} above max {hi:g}")
    return lo, hi


def _run(r: Any, where: str) -> Run:
    if not isinstance(r, dict) or not isinstance(r.get("checkpoint_id"), str):
        raise ModelError(f"{where}: not an object with a checkpoint_id")
    n, seen, planned = (
        _number(r.get(k), f"{where}.{k}", positive=True)
        for k in ("n_params", "tokens_seen", "tokens_planned")
    )
    return Run(r["checkpoint_id"], n, seen, planned)
