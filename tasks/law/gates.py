"""The gates a law entry must pass to be `ok`, i.e. usable for prediction (DESIGN.md, the fit document).

An entry that its law module marked `ok` keeps that status only if all of these hold:
1. converged: every estimate is finite (the document stores non-finite numbers as null) and so is
   the objective where the entry has one;
2. no estimate at or within 1% of a bound of its optimiser (`bounds` in the entry; 1% of the
   bounded range, in logs for a positive range over decades, which the optimisers search in logs;
   or of the bound's magnitude when the range is one-sided);
3. every estimate inside its law's plausible range (PLAUSIBLE below, with the source of each);
4. every parameter used for a prediction has a finite interval no wider than its law's maximum:
   in orders of magnitude (decades) for scales, in absolute units for exponents and levels. A
   scale's width is measured where the data are (`ci_centre`: the scale's term evaluated at the
   geometric centre of the data, e.g. A / S^alpha at the middle size), because a raw coefficient
   such as C or A is the term's value at N = D = 1, far outside the data, and its interval there
   only repeats the exponent's;
5. held-out error within 3x the held-out points' own noise (each point's noise: its stderr
   combined with the prediction's own interval, as the extrapolation check computes it).

What fails decides the status: a parameter the data cannot pin down (an interval missing or too
wide, an estimate at a bound, a term too small to be seen) makes the entry `unidentified`, naming
the parameters; anything else (not converged, implausible, a held-out miss) makes it `failed`.
Either way the entry keeps its numbers for inspection, gets a `reason` in words, and is never
drawn, used in a prediction, a claim or the headline.

This module defines the gates and applies them to one entry (`apply`); law/document_gates.py
applies them to every entry of a fit document.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kbitlaw.law.fitdoc import interval, number, path, status, strings
from kbitlaw.status import FAILED, OK, UNIDENTIFIED

BOUND_MARGIN = 0.01  # an estimate within 1% of a bound sits on it
HELDOUT_NOISE_MULTIPLE = 3.0  # held-out RMS error allowed, in units of the points' noise SD
REFERENCE_LEVEL = 0.90  # the maximum interval widths below are for intervals at this level


@dataclass(frozen=True)
class Param:
    """One parameter's plausible range (lo, hi], whether its interval width is judged in decades
    (a scale) or absolutely, and the widest interval that still identifies it."""

    name: str
    lo: float
    hi: float
    max_width: float
    scale: bool = False


@dataclass(frozen=True)
class LawGates:
    law: str
    params: tuple[Param, ...]
    source: str


INF = math.inf
# The plausible ranges and interval widths, per law (README "How the answer is reached").
POWER_LAW = LawGates(
    "power law L(S) = E + A / S^alpha over total bits S",
    (
        Param("E", 0.0, 20.0, 1.0),  # nats: a loss floor; width in nats
        Param("A", 0.0, INF, 1.0, scale=True),  # decades of A / S^alpha at the data's centre
        Param("alpha", 0.0, 2.0, 1.0),
    ),
    "Chinchilla-type exponents lie in (0, 2] (Kaplan et al. 2020: 0.076; Hoffmann et al. 2022: 0.34, "
    "0.28; Besiroglu et al. 2024: 0.35, 0.37); E is a loss in nats",
)
THRESHOLD = LawGates(
    "critical size S* (logistic in log2 total bits)",
    (
        Param("s_star_bits", 0.0, INF, 2.0, scale=True),  # decades
        Param("w", 0.0, INF, INF),  # doublings; bounded by the optimiser, judged by its bounds
        Param("r_max", 0.0, 1.0, INF),  # the accuracy it saturates at: an accuracy is at most 1
    ),
    "S* lies within one data span of the measured sizes (the optimiser's bounds); its interval "
    "spans at most 2 decades (a 100x range of model sizes)",
)
DAMAGE = LawGates(
    "damage dL = C D^beta / (N^alpha k^gamma) (Ouyang) or C D^beta / N^alpha e^(-k/gamma) (Kumar)",
    (
        Param("C", 0.0, INF, 1.0, scale=True),  # decades of dL at the data's centre
        Param("alpha", -1.0, 3.0, 1.5),
        Param("beta", -1.0, 3.0, 1.5),
        Param("gamma", 0.0, 30.0, 20.0),
    ),
    "Ouyang et al. 2024 fit alpha 0.24, beta 0.53, gamma 5.5 (power in k); Kumar et al. 2024 "
    "an exponential in k with a scale of a few bits; exponents beyond 3 in N or D (or below -1) "
    "describe no published family",
)
JOINT = LawGates(
    "joint law L(N, D) = E + A / N^alpha + B / D^beta (+ damage per scheme)",
    (
        Param("E", 0.0, 20.0, 1.0),
        Param("A", 0.0, INF, 1.0, scale=True),  # decades of A / N^alpha at the data's centre
        Param("alpha", 0.0, 2.0, 1.0),
        Param("B", 0.0, INF, 1.0, scale=True),  # decades of B / D^beta at the data's centre
        Param("beta", 0.0, 2.0, 1.0),
    ),
    "Chinchilla-type exponents in (0, 2] (Hoffmann et al. 2022: alpha 0.34, beta 0.28; Besiroglu "
    "et al. 2024: 0.35, 0.37); E a loss floor in nats",
)
JOINT_SCHEDULE = LawGates(
    "joint law L(N, S1, S2) = E + A / N^alpha + B / S1^beta - C S2 (+ damage per scheme), S1 and S2 "
    "the learning-rate schedule's areas",
    (
        *JOINT.params,
        Param("C", 0.0, INF, 1.0, scale=True),  # decades of C S2 at the centre of the annealed points
    ),
    "Chinchilla's surface with D read as the schedule's forward area S1, and Tissue et al. 2024's "
    "annealing term C S2 (C > 0: annealing lowers the loss)",
)
LAWS = {
    "power_law": POWER_LAW,
    "threshold": THRESHOLD,
    "damage": DAMAGE,
    "joint_law": JOINT,
    "joint_law_schedule": JOINT_SCHEDULE,
}


def describe_gates() -> dict:
    """The gates as the fit document records them (what `ok` meant for this fit)."""
    return {
        "bound_margin": BOUND_MARGIN,
        "heldout_noise_multiple": HELDOUT_NOISE_MULTIPLE,
        "laws": {
            key: {
                "law": g.law,
                "source": g.source,
                "params": {
                    p.name: {
                        "plausible": [p.lo, None if math.isinf(p.hi) else p.hi],
                        "max_width": None if math.isinf(p.max_width) else p.max_width,
                        "width_in": "decades" if p.scale else "absolute",
                    }
                    for p in g.params
                },
            }
            for key, g in LAWS.items()
        },
    }


# -- the gates of one entry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    unidentified: tuple[str, ...]  # parameters the data cannot determine
    failures: tuple[str, ...]  # reasons that are not about identification

    @property
    def status(self) -> str:
        return FAILED if self.failures else UNIDENTIFIED if self.unidentified else OK

    @property
    def reason(self) -> str:
        parts = list(self.failures)
        if self.unidentified:
            parts.append(f"not identified: {', '.join(self.unidentified)}")
        return "; ".join(parts) if parts else "passed its gates"


def _width(lo: float, hi: float, scale: bool) -> float:
    if scale:
        return math.log10(hi / lo) if lo > 0 and hi > 0 else INF
    return hi - lo


def _at_bound(value: float, bounds: Any, plausible: tuple[float, float] = (-INF, INF)) -> bool:
    """Within BOUND_MARGIN of a bound: 1% of the range the optimiser may search that is also
    plausible (an exponent bounded to [0, 10] is measured on (0, 2], so Kaplan's 0.076 is not at 0),
    in logs for a positive range over decades, which the optimisers search in logs."""
    lo, hi = interval(bounds)
    if lo is None or hi is None:
        one = lo if lo is not None else hi
        return one is not None and abs(value - one) <= BOUND_MARGIN * max(abs(one), 1e-12)
    top, bottom = min(hi, plausible[1]), max(lo, plausible[0])
    if lo > 0 and hi / lo > 10 and value > 0:
        lo, hi, value = math.log(lo), math.log(hi), math.log(value)
        top, bottom = math.log(top), math.log(bottom) if bottom > 0 else lo
    span = top - bottom if math.isfinite(top - bottom) and top > bottom else hi - lo
    margin = BOUND_MARGIN * span
    return value <= lo + margin or value >= hi - margin


def ci_of(entry: dict, name: str) -> tuple[float | None, float | None]:
    """A parameter's interval: `ci[name]` where `ci` maps parameters, else `<name>_ci`, else `ci`
    itself for the entry's one headline parameter (the threshold law's S*)."""
    ci = entry.get("ci")
    if isinstance(ci, dict):
        return interval(ci.get(name))
    if f"{name}_ci" in entry:
        return interval(entry.get(f"{name}_ci"))
    return interval(ci) if name == "s_star_bits" else (None, None)


def width_factor(level: float | None) -> float:
    """The maximum widths are for 90% intervals; at another level they scale with the normal
    quantile (the gate is on the parameter's spread, not on the level chosen)."""
    from scipy.stats import norm

    level = level if level is not None and 0 < level < 1 else REFERENCE_LEVEL
    return float(norm.ppf(0.5 + level / 2) / norm.ppf(0.5 + REFERENCE_LEVEL / 2))


def gate_params(entry: dict, gates: LawGates, level: float | None = None) -> Verdict:
    """Gates 1-4 for the parameters of one entry (every parameter that the entry does not list as
    dropped from its form), its intervals at `level` (else the entry's own `level`, else 90%)."""
    widen = width_factor(level if level is not None else number(entry.get("level")))
    dropped = set(strings(entry.get("dropped")))
    names = [p for p in gates.params if p.name not in dropped]
    unidentified = list(strings(entry.get("unidentified")))
    failures = []
    for p in names:
        v = number(entry.get(p.name))
        if v is None:
            if p.name not in unidentified:
                failures.append(f"{p.name} is not a finite number (the fit did not converge)")
            continue
        if not (p.lo < v <= p.hi):
            failures.append(f"{p.name} = {v:.3g} outside its plausible range ({p.lo:g}, {p.hi:g}]")
            continue
        if _at_bound(v, path(entry, "bounds", p.name), (p.lo, p.hi)):
            unidentified.append(p.name)
            continue
        if math.isinf(p.max_width):
            continue  # judged by its range and bounds alone
        lo, hi = interval(path(entry, "ci_centre", p.name) if p.scale else None)
        if lo is None or hi is None:
            lo, hi = ci_of(entry, p.name)
        if lo is None or hi is None or _width(lo, hi, p.scale) > p.max_width * widen:
            unidentified.append(p.name)
    objective = path(entry, "fit", "objective", default=0.0)
    if number(objective) is None:
        failures.append("the objective is not finite (the fit did not converge)")
    return Verdict(tuple(dict.fromkeys(unidentified)), tuple(failures))


def heldout_failure(entry: dict, level: float | None = None) -> str | None:
    """Gate 5 for the joint law: every hold-out's RMS standardized error within 3x."""
    held_out = entry.get("held_out")
    for name, h in held_out.items() if isinstance(held_out, dict) else []:
        z = standardized_rms(path(h, "checks", default=[]), level or REFERENCE_LEVEL)
        if z is not None and z > HELDOUT_NOISE_MULTIPLE:
            what = name.replace("_", " ")
            return (
                f"held-out {what}: RMS error {z:.3g}x the points' noise (at most {HELDOUT_NOISE_MULTIPLE:g}x)"
            )
    return None


def standardized_rms(checks: Any, level: float = 0.9) -> float | None:
    """RMS of each check's error over its noise SD (its tolerance half-width over the normal
    quantile: the observation's stderr combined with the prediction's interval)."""
    from scipy.stats import norm

    z_level = float(norm.ppf(0.5 + level / 2))
    zs = []
    for c in checks if isinstance(checks, list) else []:
        if not isinstance(c, dict) or c.get("status") != OK:
            continue
        err, pred = number(c.get("error")), number(c.get("predicted"))
        lo, hi = interval(c.get("tolerance"))
        if err is None or pred is None or lo is None or hi is None:
            continue
        side = (hi - pred) if err < 0 else (pred - lo)  # the side the observation fell on
        sd = side / z_level
        if sd > 0:
            zs.append(err / sd)
    return math.sqrt(sum(z * z for z in zs) / len(zs)) if zs else None


def gate_entry(section: str, entry: dict, level: float | None = None) -> Verdict:
    """Every gate of one entry of a section of the fit document (intervals at `level`)."""
    if section == "power_law":
        return gate_params(entry, POWER_LAW, level=level)
    if section == "threshold":
        return gate_params(entry, THRESHOLD, level=level)
    if section == "damage":
        v = gate_params(entry, DAMAGE, level=level)
        err = number(entry.get("heldout_error"))
        if err is not None and err > HELDOUT_NOISE_MULTIPLE:
            limit = f"(at most {HELDOUT_NOISE_MULTIPLE:g}x)"
            msg = f"held-out latest checkpoint: RMS error {err:.3g}x the points' noise {limit}"
            return Verdict(v.unidentified, (*v.failures, msg))
        return v
    if section == "joint_law":
        v = gate_params(entry, JOINT_SCHEDULE if entry.get("form") == "schedule" else JOINT, level=level)
        failure = heldout_failure(entry, level)
        return Verdict(v.unidentified, (*v.failures, failure) if failure else v.failures)
    if section == "joint_damage":
        return gate_params(entry, DAMAGE, level=level)
    if section == "curves":
        ok = all(number(entry.get(k)) is not None for k in ("slope", "intercept"))
        return Verdict((), () if ok else ("the fitted line is not finite",))
    if section == "recommendation":
        return gate_recommendation(entry)
    return Verdict((), ())


def gate_recommendation(rec: dict) -> Verdict:
    failures = []
    if not isinstance(rec.get("quant"), str) or number(rec.get("bits")) is None:
        failures.append("no recommended spec")
    p_best = rec.get("p_best")
    if p_best is not None and (
        not isinstance(p_best, dict)
        or any(number(v) is None or not 0 <= number(v) <= 1 for v in p_best.values())
    ):
        failures.append("P(best) is not a probability for every width")
    return Verdict((), tuple(failures))


def apply(section: str, entry: dict, level: float | None = None) -> dict:
    """The entry with its status and reason after the gates (entries not `ok` keep theirs)."""
    if status(entry) != OK:
        entry.setdefault("reason", entry.get("reason") or _default_reason(entry))
        return entry
    v = gate_entry(section, entry, level)
    entry["status"], entry["reason"] = v.status, v.reason
    if v.unidentified:
        entry["unidentified"] = list(v.unidentified)
    return entry


def _default_reason(entry: dict) -> str:
    return {"insufficient data": "too few sizes or checkpoints for this law"}.get(
        status(entry), status(entry)
    )
