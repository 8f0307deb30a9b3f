"""Which checkpoints of a family the joint law is fitted on, and in which form.

Why: Chinchilla's surface L(N, D) describes finished models, each trained to D tokens with its
learning rate annealed to the end. A checkpoint halfway through a cosine run has seen D tokens but
not the annealing, so its loss lies above that surface, and a fit through such checkpoints bends the
law (the report's note on the demo's missed latest checkpoints was this). Two ways out:
- every checkpoint's schedule is known (kbitlaw.json lr_schedule or trainer_state.json: the
  results' lr_area and lr_anneal): the schedule form L = E + A/N^alpha + B/S1^beta - C S2
  (law/joint/anneal.py) describes every checkpoint along a run, so all of them are used;
- otherwise the Chinchilla form on the finished checkpoints only: `finished: true`, or a
  tokens_planned within FINISHED of tokens_seen (the run ended there). A checkpoint with a
  tokens_planned beyond its tokens_seen and no `finished` is an intermediate checkpoint of a run
  still decaying its rate: left out of the fit and of the checks that compare the law with observed
  losses (the law does not describe it), though its run's end is still predicted (`in_progress`).
  A checkpoint with neither field says nothing: it is assumed finished, as before these fields
  existed, and the entry counts it so.
Whatever the choice, the entry says it in one sentence (`note`) with the checkpoints left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from kbitlaw.law.joint.law import SCHEDULE_FORM, schedule_known, sixteen_bit
from kbitlaw.law.joint.model import FINISHED

CHINCHILLA_FORM = "chinchilla"
LAWS = {
    SCHEDULE_FORM: "L = E + A/N^alpha + B/S1^beta - C*S2",
    CHINCHILLA_FORM: "L = E + A/N^alpha + B/D^beta",
}


@dataclass(frozen=True)
class Selection:
    form: str  # schedule | chinchilla
    used: pl.DataFrame  # the loss points of the checkpoints the law is fitted on
    left_out: list[dict] = field(default_factory=list)  # {"checkpoint_id", "reason"}, by id
    assumed_finished: int = 0  # checkpoints used that said neither finished nor tokens_planned
    without_schedule: int = 0  # checkpoints without lr_area / lr_anneal
    n_checkpoints: int = 0

    def entry(self) -> dict:
        """The fit document's `checkpoints`: counts, the left-out ones and the sentence."""
        return {
            "form": self.form,
            "used": self.n_checkpoints - len(self.left_out),
            "left_out": self.left_out,
            "assumed_finished": self.assumed_finished,
            "without_schedule": self.without_schedule,
            "note": self.note(),
        }

    def note(self) -> str:
        used = self.n_checkpoints - len(self.left_out)
        if self.form == SCHEDULE_FORM:
            return (
                f"Learning-rate schedules known for all {self.n_checkpoints} checkpoints: "
                f"{LAWS[SCHEDULE_FORM]} fitted on every one of them, intermediate checkpoints included."
            )
        why = (
            "No learning-rate schedule"
            if self.without_schedule >= self.n_checkpoints
            else f"No learning-rate schedule for {self.without_schedule} of {self.n_checkpoints} checkpoints"
        )
        parts = [f"{why}: {LAWS[CHINCHILLA_FORM]} fitted on the {used} finished checkpoints"]
        intermediate = sum(e["reason"].startswith("intermediate") for e in self.left_out)
        if intermediate:
            parts.append(
                f"{intermediate} intermediate checkpoints of decaying runs (tokens_planned beyond "
                "tokens_seen, not marked finished) left out"
            )
        if len(self.left_out) > intermediate:
            parts.append(f"{len(self.left_out) - intermediate} marked finished: false left out")
        if self.assumed_finished:
            parts.append(
                f"{self.assumed_finished} with neither finished nor tokens_planned in kbitlaw.json "
                "assumed finished"
            )
        return "; ".join(parts) + "."


def checkpoint_rows(df: pl.DataFrame) -> pl.DataFrame:
    """One row per checkpoint: its id, tokens and what it says about finishing and its schedule."""
    cols = ["finished", "tokens_planned", "lr_area", "lr_anneal"]
    have = df.with_columns([pl.lit(None, dtype=pl.Float64).alias(c) for c in cols if c not in df.columns])
    return (
        have.group_by("checkpoint_id")
        .agg(pl.col("tokens_seen").max(), *(pl.col(c).drop_nulls().first() for c in cols))
        .sort("checkpoint_id")
    )


def select(df: pl.DataFrame) -> Selection:
    """The form of the family's law and the loss points (law/joint/law.py loss_points) it uses."""
    rows = checkpoint_rows(df)
    known = rows.filter(pl.col("lr_area").is_not_null() & pl.col("lr_anneal").is_not_null())
    without = rows.height - known.height
    if df.height and schedule_known(sixteen_bit(df)):
        return Selection(SCHEDULE_FORM, df, [], 0, without, rows.height)
    left_out, assumed = [], 0
    for r in rows.iter_rows(named=True):
        flag, planned, seen = r["finished"], r["tokens_planned"], r["tokens_seen"]
        if flag is False:
            left_out.append({"checkpoint_id": r["checkpoint_id"], "reason": "marked finished: false"})
        elif flag is None and planned is not None and planned > FINISHED * seen:
            why = f"intermediate checkpoint: {seen:.4g} of {planned:.4g} planned tokens, no schedule"
            left_out.append({"checkpoint_id": r["checkpoint_id"], "reason": why})
        elif flag is None and planned is None:
            assumed += 1
    dropped = [e["checkpoint_id"] for e in left_out]
    used = df.filter(~pl.col("checkpoint_id").is_in(dropped)) if dropped else df
    return Selection(CHINCHILLA_FORM, used, left_out, assumed, without, rows.height)
