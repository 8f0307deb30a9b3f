"""The loss power law over model size: L(S) = E + A / S^alpha over total model bits S, per (family,
spec), on each size's latest checkpoint.

Where the full form does not pass its gates, the nested form without E is fitted instead. Each group
is also refit without its largest model, which is then predicted (the extrapolation check; its
noise and prediction interval: law/numerics/holdout.py). All groups of a form, and their refits, go
through one batched bootstrap (law/numerics/nonlinear.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl

from kbitlaw.law.common import NO_DATA, OK, FitConfig, ci_pair, num
from kbitlaw.law.numerics.holdout import PowerLawRefit, power_law_prediction_boot
from kbitlaw.law.numerics.nonlinear import (
    POWER_LAW_HI,
    POWER_LAW_LO,
    Bootstrapped,
    PowerLawProblem,
    bootstrap_power_laws,
    power_law_predict,
)
from kbitlaw.law.size.groups import (
    SizeGroup,
    check_largest,
    curve_rows,
    group_noise,
    size_groups,
    solve_groups,
)
from kbitlaw.vocab import LOSS


def _power_law_entry(group: SizeGroup, f: Bootstrapped | None, level: float) -> dict:
    if f is None:
        return {
            **group.base,
            "E": None,
            "A": None,
            "alpha": None,
            "ci": {"E": [None, None], "A": [None, None], "alpha": [None, None]},
            "status": NO_DATA,
        }
    a, alpha, e = f.theta
    # A's scale where the data are: A / S^alpha at the geometric centre of the sizes (gates.py)
    log_s = float(np.log(group.points["total_bits"].to_numpy().astype(float)).mean())
    with np.errstate(over="ignore", invalid="ignore"):
        a_term = np.exp(f.boot[:, 0] - f.boot[:, 1] * log_s)
    ci = {
        "E": ci_pair(np.exp(f.boot[:, 2]), level),
        "A": ci_pair(np.exp(f.boot[:, 0]), level),
        "alpha": ci_pair(f.boot[:, 1], level),
    }
    return {
        **group.base,
        "E": num(np.exp(e)),
        "A": num(np.exp(a)),
        "alpha": num(alpha),
        "ci": ci,
        "ci_centre": {"A": ci_pair(a_term, level)},
        "centre": {"total_bits": num(np.exp(log_s)), "A_term": num(np.exp(a - alpha * log_s))},
        "bounds": {
            "alpha": [num(POWER_LAW_LO[1]), num(POWER_LAW_HI[1])],
            "E": [num(np.exp(POWER_LAW_LO[2])), num(np.exp(POWER_LAW_HI[2]))],
        },
        "dropped": [],
        "nested": None,
        "status": OK,
    }


def fit_power_laws_by_spec(latest: pl.DataFrame, config: FitConfig, warm: Mapping) -> tuple[list, list, list]:
    """L(S) = E + A*S^-alpha per (family, spec) on the mean loss: doc entries, checks, table rows.

    Where the full form does not pass its gates (law/gates.py; e.g. a loss that flattens over the
    sizes leaves E, A and alpha trading off), the nested form without E, a line in log-log, is
    fitted and reported instead when it passes, with `dropped` and `nested` saying so."""
    from kbitlaw.law.common import json_safe
    from kbitlaw.law.gates import POWER_LAW, gate_params

    groups = size_groups(latest, (pl.col("metric") == LOSS) & (pl.col("value") > 0))
    full = _power_laws(groups, config, warm, drop_e=False, minimum=config.min_sizes_power_law)
    failing = [
        i
        for i, (e, _, _) in enumerate(full)
        if e["status"] == OK and gate_params(json_safe(e), POWER_LAW, level=config.level).status != OK
    ]
    nested = _power_laws([groups[i] for i in failing], config, warm, drop_e=True, minimum=config.min_sizes)
    for i, (e, check, rows) in zip(failing, nested, strict=True):
        if e["status"] == OK and gate_params(json_safe(e), POWER_LAW, level=config.level).status == OK:
            why = gate_params(json_safe(full[i][0]), POWER_LAW, level=config.level).reason
            e["nested"] = f"E dropped from the form (L = A / S^alpha): in the full form, {why}"
            full[i] = (e, check, rows)
    entries = [e for e, _, _ in full]
    checks = [c for _, c, _ in full if c is not None]
    rows = [r for _, _, r in full if r is not None]
    return entries, checks, rows


def _power_laws(
    groups: list[SizeGroup], config: FitConfig, warm: Mapping, *, drop_e: bool, minimum: int
) -> list[tuple[dict, dict | None, pl.DataFrame | None]]:
    """(entry, extrapolation check, curve rows) per group, in the full form or without E."""
    tag = "|E dropped" if drop_e else ""

    def make(g: SizeGroup, keep: np.ndarray | None) -> PowerLawProblem:
        s, v = g.points["total_bits"].to_numpy(), g.points["value"].to_numpy()
        w = None if drop_e else warm.get(("power_law", g.family, g.quant, LOSS))
        key = f"power_law|{g.family}|{g.quant}|{LOSS}{tag}"
        if keep is None:
            return PowerLawProblem(key, s, v, warm=w, drop_e=drop_e)
        s_next = float(s[~keep][0])
        return PowerLawProblem(
            f"{key}|extrapolate", s[keep], v[keep], s_predict=s_next, warm=w, drop_e=drop_e
        )

    def solve(todo: list[PowerLawProblem]) -> list[Bootstrapped]:
        return bootstrap_power_laws(todo, config.n_boot, config.seed)

    fits, held = solve_groups(groups, make, lambda g: minimum, solve)
    out = []
    for g, f, check in zip(groups, fits, power_law_checks(groups, held, config, drop_e), strict=True):
        entry = _power_law_entry(g, f, config.level)
        if drop_e and f is not None:
            entry.update(E=0.0, dropped=["E"])
            entry["ci"]["E"] = [0.0, 0.0]
        rows = None
        if f is not None:
            s = g.points["total_bits"].to_numpy()
            grid = np.geomspace(s.min(), s.max(), config.grid_points)
            rows = curve_rows("power_law", g, grid, grid, power_law_predict, f, config.level)
        out.append((entry, check, rows))
    return out


def power_law_checks(
    groups: list[SizeGroup], held: list, config: FitConfig, drop_e: bool = False
) -> list[dict | None]:
    """Each group's extrapolation check (None without a refit). The prediction interval is a
    parametric bootstrap of the refit, all groups in one batch (law/numerics/holdout.py)."""
    noises, refits = {}, {}
    for i, (g, h) in enumerate(zip(groups, held, strict=True)):
        if h is None:
            continue
        s, keep = g.points["total_bits"].to_numpy(), g.without_largest()
        noises[i] = group_noise(g, h, power_law_predict, s, 2 if drop_e else 3, log=True)
        if noises[i] is not None:
            key = f"power_law|{g.family}|{g.quant}|loss{'|E dropped' if drop_e else ''}|extrapolate"
            refits[i] = PowerLawRefit(key, s[keep], h, noises[i], float(s[~keep][0]), drop_e)
    boots = power_law_prediction_boot(list(refits.values()), config.n_boot, config.seed)
    predicted = dict(zip(refits, boots, strict=True))
    return [
        None if h is None else check_largest("power_law", g, predicted.get(i, h), noises[i], config.level)
        for i, (g, h) in enumerate(zip(groups, held, strict=True))
    ]
