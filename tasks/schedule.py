"""A checkpoint's learning-rate schedule, summarised as the two areas the schedule-aware joint law
needs (law/joint/anneal.py).

Why: a checkpoint halfway through a cosine run is not a finished model of its tokens; its loss
sits above what a run of that length, annealed to its end, reaches. Tissue et al. (2024, "Scaling
Law with Learning Rate Annealing", arXiv:2408.11029) describe the loss at any step of any schedule
by two sums over the optimizer steps, L = L0 + A S1^-alpha - C S2:

    S1 = sum_{i=1..s} eta_i                                   the forward area
    S2 = sum_{i=1..s} m_i,  m_i = lambda m_{i-1} + (eta_{i-1} - eta_i),  m_0 = 0    the annealing area

with lambda = DECAY = 0.999, the paper's default. The abstract names S1 and S2; the momentum form of
S2 is the paper's as we read it (its full text was not at hand when this was written), and these
are the definitions this module computes. Our choices on top of it:
- eta is the learning rate over the schedule's peak, and each step weighs its tokens (tokens_seen /
  step): the areas are in tokens, so a constant schedule's S1 is tokens_seen and its S2 is 0, and
  the 16-bit law in S1 reads like Chinchilla's in D;
- the warmup (every step up to the first at the peak) counts in S1 at its rate but adds nothing to
  S2, where its rising rate would enter as negative annealing;
- between two given steps the rate is linear; before the first given step it is the first value
  (a Trainer logs its first rate at step `logging_steps`, not at step 1), after the last the last.
  A Trainer logs the rate its scheduler holds after step s's update as step s's rate: one step of
  lag, negligible at thousands of steps.
The sums run over every step, vectorised CHUNK steps at a time, so memory stays bounded and a
million-step schedule costs about 0.1 s (plus scipy.signal's import, once).

Sources, in order: kbitlaw.json's `lr_schedule`, [[step, lr], ...], which may run beyond the
checkpoint's step (the rest of the run as planned: the areas at its last step are the run's
planned end); else the Hugging Face Trainer's trainer_state.json, written into every checkpoint
(`log_history[].learning_rate` at `log_history[].step`; it knows only the past). A schedule that
cannot be read is a `problem`, one line naming the file and the field; the checkpoint is then
described and evaluated without one (discovery never fails on it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

DECAY = 0.999  # lambda of the annealing momentum (Tissue et al.'s default)
CHUNK = 1 << 20  # steps summed per vectorised pass (bounds the memory of a long schedule)
MAX_STEPS = 100_000_000  # a schedule past this many steps is a typo, not a run
SIDECAR_FIELD = "lr_schedule"
TRAINER_STATE = "trainer_state.json"
WITHOUT = "the checkpoint is evaluated without a learning-rate schedule"


class ScheduleError(ValueError):
    """A schedule that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Schedule:
    """A checkpoint's areas in tokens (None: unknown) and where they came from, or why not."""

    lr_area: float | None = None  # S1 up to the checkpoint's step
    lr_anneal: float | None = None  # S2 up to the checkpoint's step
    lr_area_planned: float | None = None  # S1 at the schedule's last step, when it runs beyond
    lr_anneal_planned: float | None = None
    source: str | None = None  # kbitlaw.json | trainer_state.json
    problem: str | None = None  # one line: why a schedule that was there is not used


# -- the areas ---------------------------------------------------------------------------------------


def step_areas(
    steps: np.ndarray, lrs: np.ndarray, at: list[int], decay: float = DECAY
) -> dict[int, tuple[float, float]]:
    """(S1, S2) in steps, eta = lr / peak, summed over the optimizer steps 1..s for each s in `at`
    (module docstring). `steps` strictly increasing whole numbers, `lrs` >= 0 with a positive peak."""
    steps, lrs = np.asarray(steps, dtype=float), np.asarray(lrs, dtype=float)
    eta = lrs / lrs.max()
    peak_step = steps[int(np.argmax(lrs))]  # the first step at the peak: the warmup ends there
    wanted = sorted({int(s) for s in at})
    out = {s: (0.0, 0.0) for s in wanted if s <= 0}
    end = wanted[-1] if wanted else 0
    s1 = s2 = m = 0.0
    before = float(np.interp(0.0, steps, eta))
    from scipy.signal import lfilter

    for start in range(1, end + 1, CHUNK):
        i = np.arange(start, min(start + CHUNK, end + 1), dtype=float)
        e = np.interp(i, steps, eta)
        drop = -np.diff(e, prepend=before)  # eta_{i-1} - eta_i
        drop[i <= peak_step] = 0.0
        mom = lfilter([1.0], [1.0, -decay], drop, zi=[decay * m])[0]
        c1, c2 = s1 + np.cumsum(e), s2 + np.cumsum(mom)
        for s in wanted:
            if start <= s <= i[-1]:
                out[s] = (float(c1[s - start]), float(c2[s - start]))
        s1, s2, m, before = float(c1[-1]), float(c2[-1]), float(mom[-1]), float(e[-1])
    return out


def token_areas(
    steps: np.ndarray, lrs: np.ndarray, step: int, tokens_seen: float, source: str, plans: bool = True
) -> Schedule:
    """The Schedule of a checkpoint at `step` having seen `tokens_seen`: its areas in tokens, and
    the planned end's when the schedule runs beyond the step and `plans` (a trainer's log knows
    only the past)."""
    last = int(steps[-1])
    planned = plans and last > step
    found = step_areas(steps, lrs, [step, last] if planned else [step])
    per_step = tokens_seen / step
    s1, s2 = found[step]
    p1, p2 = found[last] if planned else (None, None)
    scaled = (None if v is None else v * per_step for v in (s1, s2, p1, p2))
    return Schedule(*scaled, source=source)


# -- reading -------------------------------------------------------------------------------------------


def _whole(x: Any) -> bool:
    return (
        isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 and x == int(x)
    )


def _rate(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def checked_pairs(
    pairs: list[tuple[Any, Any]], names: list[str], where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Steps and rates as arrays: whole steps >= 0, strictly increasing, finite rates >= 0 with a
    positive peak; ScheduleError naming the field (`names[i]` names pair i) otherwise."""
    if not pairs:
        raise ScheduleError(f"{where}: no learning rates")
    for (step, lr), name in zip(pairs, names, strict=True):
        if not _whole(step):
            raise ScheduleError(f"{where}: field {name} step must be a whole number >= 0, got {step!r}")
        if not _rate(lr):
            raise ScheduleError(f"{where}: field {name} learning rate must be a number >= 0, got {lr!r}")
    for (a, _), (b, _), name in zip(pairs, pairs[1:], names[1:], strict=False):
        if b <= a:
            raise ScheduleError(f"{where}: field {name}: steps not increasing ({a:g} then {b:g})")
    if pairs[-1][0] > MAX_STEPS:
        raise ScheduleError(f"{where}: field {names[-1]}: step {pairs[-1][0]:g} is past {MAX_STEPS:,} steps")
    steps = np.array([p[0] for p in pairs], dtype=float)
    lrs = np.array([p[1] for p in pairs], dtype=float)
    if lrs.max() <= 0:
        raise ScheduleError(f"{where}: every learning rate is 0")
    return steps, lrs


def sidecar_pairs(value: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """kbitlaw.json's lr_schedule: a list of [step, lr] pairs."""
    if not isinstance(value, list) or not all(isinstance(p, list | tuple) and len(p) == 2 for p in value):
        raise ScheduleError(f"{where}: field '{SIDECAR_FIELD}' must be a list of [step, lr] pairs")
    names = [f"'{SIDECAR_FIELD}[{i}]'" for i in range(len(value))]
    return checked_pairs([tuple(p) for p in value], names, where)


def trainer_state_pairs(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray, int | None]:
    """trainer_state.json's logged rates and global_step. Entries without a learning_rate (evaluation
    logs, the closing summary) are skipped; an entry logged twice at one step counts once."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ScheduleError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ScheduleError(f"{where}: must be a JSON object, got {type(doc).__name__}")
    history, global_step = doc.get("log_history"), doc.get("global_step")
    if global_step is not None and not _whole(global_step):
        raise ScheduleError(f"{where}: field 'global_step' must be a whole number >= 0, got {global_step!r}")
    if not isinstance(history, list):
        raise ScheduleError(f"{where}: field 'log_history' must be a list")
    pairs, names = [], []
    for i, entry in enumerate(history):
        if not isinstance(entry, dict) or "learning_rate" not in entry:
            continue
        pair, name = (entry.get("step"), entry["learning_rate"]), f"'log_history[{i}]'"
        if pairs and pair == pairs[-1]:
            continue
        pairs.append(pair)
        names.append(name)
    if not pairs:
        raise ScheduleError(f"{where}: field 'log_history' has no learning_rate")
    steps, lrs = checked_pairs(pairs, names, where)
    return steps, lrs, None if global_step is None else int(global_step)


def read_schedule(
    sidecar: dict[str, Any],
    trainer_state: bytes | None,
    step: int | None,
    tokens_seen: int | None,
    where: str,
) -> Schedule:
    """The checkpoint's Schedule from its sidecar's lr_schedule, else its trainer_state.json bytes;
    an empty one (all None) when it has neither; one with `problem` set when it has one that
    cannot be used. `where`: the checkpoint folder, for messages."""
    try:
        if sidecar.get(SIDECAR_FIELD) is not None:
            source = "kbitlaw.json"
            steps, lrs = sidecar_pairs(sidecar[SIDECAR_FIELD], f"{where}/{source}")
        elif trainer_state is not None:
            source = TRAINER_STATE
            steps, lrs, global_step = trainer_state_pairs(trainer_state, f"{where}/{source}")
            step = step if step is not None else global_step
        else:
            return Schedule()
        if step == 0:
            return Schedule(0.0, 0.0, source=source)
        if not step or not tokens_seen:
            what = "step" if not step else "tokens_seen"
            raise ScheduleError(
                f"{where}/kbitlaw.json: field '{what}' is needed to weigh the schedule's steps in tokens"
            )
        return token_areas(steps, lrs, int(step), float(tokens_seen), source, source != TRAINER_STATE)
    except ScheduleError as exc:
        return Schedule(problem=f"{exc}; {WITHOUT}")
