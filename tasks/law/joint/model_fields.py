"""Reading the stored joint law (law/joint/model.py) one field at a time: each helper checks one
field and raises ModelError naming it when it is not what the layout says (a number outside its
domain included), never anything else, so a broken document cannot crash a reader."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kbitlaw.law.damage.design import FORMS
from kbitlaw.law.damage.design import PARAMS as DAMAGE_PARAMS
from kbitlaw.law.damage.fit import DamageFit
from kbitlaw.law.damage.law import DamageModel
from kbitlaw.law.joint.law import SpecInfo

MAX_BITS = 64.0  # no spec stores more bits per weight than this: a larger value is corrupt


class ModelError(ValueError):
    """The stored model cannot be read; the message names the field."""


def number(x: Any, where: str, *, positive: bool = False, at_most: float = math.inf) -> float:
    """A finite float (bools, strings, None, NaN and inf are not)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ModelError(f"{where}: {x!r} is not a finite number")
    if (positive and x <= 0) or x > at_most:
        bound = f"in (0, {at_most:g}]" if positive else f"at most {at_most:g}"
        raise ModelError(f"{where}: {x!r} is not {bound}")
    return float(x)


def obj(parent: dict, key: str, where: str) -> dict:
    v = parent.get(key)
    if not isinstance(v, dict):
        raise ModelError(f"{where}.{key}: missing or not an object")
    return v


def vector(x: Any, length: int, where: str) -> np.ndarray:
    if not isinstance(x, list) or len(x) != length:
        raise ModelError(f"{where}: not a list of {length} numbers")
    return np.array([number(v, f"{where}[{i}]") for i, v in enumerate(x)], dtype=float)


def matrix(x: Any, width: int, where: str) -> np.ndarray:
    """Bootstrap replicates [n_boot, width]; a null (or non-finite) value is a failed replicate."""
    if not isinstance(x, list) or not all(isinstance(r, list) and len(r) == width for r in x):
        raise ModelError(f"{where}: not a list of rows of {width} numbers")
    out = np.full((len(x), width), np.nan)
    for i, row in enumerate(x):
        for j, v in enumerate(row):
            if not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v):
                out[i, j] = v
    return out


def damage_model(scheme: Any, v: Any) -> DamageModel:
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
    theta = vector(v.get("theta"), len(cols), f"{where}.theta")
    boot = matrix(v.get("boot"), len(cols), f"{where}.boot")
    # predicting reads only theta and boot: the noise model is not stored (NaN, 0 dof)
    return DamageModel(str(scheme), v["form"], np.array(cols), DamageFit(theta, boot, math.nan, math.nan, 0))


def spec_info(quant: Any, v: Any) -> SpecInfo:
    where = f"model.specs.{quant}"
    if not isinstance(v, dict) or not isinstance(v.get("scheme"), str):
        raise ModelError(f"{where}: not an object with a scheme")
    bits = number(v.get("bits"), f"{where}.bits", positive=True, at_most=MAX_BITS)
    bpp = number(v.get("bits_per_param"), f"{where}.bits_per_param", positive=True, at_most=MAX_BITS)
    return SpecInfo(v["scheme"], bits, bpp)


def share(memory: dict) -> float:
    share = number(memory.get("quantized_share"), "model.memory.quantized_share", positive=True, at_most=1.0)
    return share


def unquantized(v: Any) -> tuple[float, float] | None:
    if v is None:
        return None
    slope, intercept = vector(v, 2, "model.memory.unquantized")
    return float(slope), float(intercept)


def span(x: Any, where: str) -> tuple[float, float]:
    if not isinstance(x, list) or len(x) != 2:
        raise ModelError(f"{where}: not a [min, max] pair")
    lo, hi = (number(v, where, positive=True) for v in x)
    if lo > hi:
        raise ModelError(f"{where}: min {lo:g} above max {hi:g}")
    return lo, hi


def surface_of(surface: dict, version: int):
    """The stored 16-bit surface: version 1 had only a Chinchilla surface's theta and boot."""
    from kbitlaw.law.joint import anneal, chinchilla

    form = "chinchilla" if version == 1 else surface.get("form")
    where = "model.surface"
    if form not in (chinchilla.Surface.form, anneal.FORM):
        raise ModelError(f"{where}.form: {form!r} is not chinchilla or schedule")
    width = len(anneal.THETA if form == anneal.FORM else chinchilla.THETA)
    theta = vector(surface.get("theta"), width, f"{where}.theta")
    boot = matrix(surface.get("boot"), width, f"{where}.boot")
    scale = surface.get("log_scale")
    scale = math.nan if scale is None else number(scale, f"{where}.log_scale")
    n_points = surface.get("n_points", 0)
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 0:
        raise ModelError(f"{where}.n_points: {n_points!r} is not a whole number >= 0")
    if form == chinchilla.Surface.form:
        return chinchilla.Surface(theta, boot, math.nan, n_points, False, scale)
    s2_ref = number(surface.get("s2_ref"), f"{where}.s2_ref", positive=True)
    shape = vector(surface.get("shape"), 2, f"{where}.shape")
    if shape[0] <= 0 or shape[1] < 0:
        raise ModelError(f"{where}.shape: {shape.tolist()!r} is not [S1/D > 0, S2/D >= 0]")
    dropped = surface.get("dropped", [])
    if not isinstance(dropped, list) or not set(dropped) <= {"C"}:
        raise ModelError(f"{where}.dropped: {dropped!r} is not [] or ['C']")
    if theta[5] < 0:
        raise ModelError(f"{where}.theta[5]: {theta[5]!r} is not >= 0 (C >= 0)")
    return anneal.AnnealSurface(
        theta,
        boot,
        math.nan,
        n_points,
        False,
        s2_ref,
        (float(shape[0]), float(shape[1])),
        scale,
        dropped=tuple(dropped),
    )
