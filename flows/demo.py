"""`kbitlaw demo`: build the embedded demo family if missing, then run the nightly flow over it.

The nightly flow cleans and validates the builtin datasets itself; the demo only adds the
checkpoints (kbitlaw.demo.train: a GPT-NeoX family trained here, cached in the store) and a grid small
enough for a first run on a laptop CPU, yet with the precisions the laws need: 16-bit, 8, 4 and 3
bits, integer and a 4-bit float type, with and without blocks.

    summary = run_demo(".kbitlaw/store")                 # build what is missing + nightly
    summary = run_demo(store, arrive=True)               # publish the next round of checkpoints first
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from typing import Any

from kbitlaw.demo.family import TrainConfig, family_sizes
from kbitlaw.demo.family_store import publish_next, staged_rounds
from kbitlaw.demo.story import story
from kbitlaw.demo.train import BuildReport, Progress, build_family
from kbitlaw.store import CHECKPOINTS, Store, checkpoint_prefix

DEMO_FAMILY = "demo"
DEMO_GRID = "demo"  # kbitlaw.quant.spec.GRIDS["demo"]


@contextmanager
def progress_bars(enabled: bool):
    """A progress callback for build_family: rich bars per size on stderr, or nothing."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bars

    bars = Bars(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    tasks: dict[str, Any] = {}

    def update(p: Progress) -> None:
        if p.phase in ("tokenizer", "corpus"):
            bars.console.print(
                f"[dim]{'training the tokenizer' if p.phase == 'tokenizer' else 'encoding the corpus'}"
            )
        elif p.phase == "publish":
            bars.console.print(f"published {p.size}")
        elif p.size:
            if p.size not in tasks:
                tasks[p.size] = bars.add_task(p.size, total=p.total, note="")
            if p.phase == "cached" or p.loss is not None:
                bars.update(tasks[p.size], note="cached" if p.phase == "cached" else f"loss {p.loss:.3f}")
            bars.update(tasks[p.size], completed=p.step)

    with bars:
        yield update


def run_demo(
    store: str | None = None,
    *,
    arrive: bool = False,
    grid: str = DEMO_GRID,
    workers: int | None = None,
    sizes: str | None = None,
    budget: int | None = None,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Build the family (what is missing) and run nightly; returns {"build", "first_night",
    "nightly", "story"}. New checkpoints are published in rounds: by default all but the last
    round, a night (`first_night`), the last round and a night, so the second refit checks the
    joint law's predictions of the last checkpoints (the report's running check); arrive=True
    publishes one round and runs one night.

    show_progress: rich progress bars on stderr (default: when stderr is a terminal)."""
    s = Store(store)
    cores = len(os.sched_getaffinity(0))
    workers = workers or cores
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    config = TrainConfig(budget_tokens=budget) if budget else TrainConfig()
    began = time.perf_counter()
    with progress_bars(show_progress) as update:
        # New checkpoints are staged and published in rounds, as a training run's would arrive.
        report: BuildReport = build_family(
            s,
            DEMO_FAMILY,
            sizes=family_sizes(sizes),
            config=config,
            arrive=True,
            workers=workers,
            progress=update,
        )
    built = time.perf_counter()
    first_night = None
    if not arrive:
        # Everything but the last round, a night, then the last round and another night: the
        # second night's refit checks what the first night's law predicted for the new checkpoints.
        while staged_rounds(s, DEMO_FAMILY) > 1:
            report.published += publish_next(s, DEMO_FAMILY)
        if staged_rounds(s, DEMO_FAMILY) == 1:
            if any(k.endswith("/config.json") for k in s.list(checkpoint_prefix(CHECKPOINTS, DEMO_FAMILY))):
                first_night = run_nightly(s, grid, workers)
                first_night["seconds"] = round(time.perf_counter() - built, 2)
            report.published += publish_next(s, DEMO_FAMILY)
    second = time.perf_counter()
    summary = run_nightly(s, grid, workers)
    night_done = time.perf_counter()
    return {
        "first_night": first_night,
        "build": {
            "family": report.family,
            "trained": len(report.trained),
            "cached": len(report.cached),
            "published": report.published,
            "steps_trained": report.steps_trained,
            "seconds": round(built - began, 2),
        },
        "nightly": summary | {"seconds": round(night_done - second, 2)},
        "story": _story_or_none(s),
    }


def _story_or_none(store: Store) -> dict[str, Any] | None:
    try:
        return story(store, DEMO_FAMILY)
    except Exception as exc:  # the story is a summary of the run; it never fails the demo
        logging.getLogger("kbitlaw").warning("story check skipped: %s", exc)
        return None


def run_nightly(store: Store, grid: str, workers: int) -> dict[str, Any]:
    """The nightly flow over the store's checkpoints, `workers` evaluations side by side (each with
    one torch thread and its own loaded model: the demo's models are small)."""
    import torch

    from kbitlaw.eval import sweep
    from kbitlaw.flows.nightly import nightly, run_summary, task_runner

    sweep.POOL.capacity = max(sweep.POOL.capacity, workers)
    threads = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(1)
    try:
        flow = nightly.with_options(task_runner=task_runner("thread", workers))
        state = flow(store=store.uri, grid=grid, workers=workers, return_state=True)
    finally:
        torch.set_num_threads(threads)
    return run_summary(state)


def describe(summary: dict[str, Any]) -> list[str]:
    """The lines `kbitlaw demo` prints: what was built, what nightly did, where the report is."""
    build, night = summary["build"], summary["nightly"]
    lines = [
        f"family {build['family']}: {build['trained']} checkpoints trained, {build['cached']} cached"
        + (f", {len(build['published'])} published" if build["published"] else "")
        + f" ({build['seconds']:.0f} s)"
    ]
    if first := summary.get("first_night"):
        ev = first.get("evaluations", {})
        lines.append(
            f"first night (all but the last round): {first.get('checkpoints')} checkpoints; evaluations: "
            f"{ev.get('computed')} computed, {ev.get('cached')} cached, {ev.get('failed')} failed "
            f"({first['seconds']:.0f} s); then the last round arrived"
        )
    if "error" in night and "checkpoints" not in night:
        return [*lines, f"nightly failed: {night['error']}"]
    ev, unreadable = night.get("evaluations", {}), night.get("failed_checkpoints")
    failed = f", {unreadable} failed (unreadable)" if unreadable else ""
    lines.append(
        f"nightly: {night.get('checkpoints')} checkpoints ({night.get('new_checkpoints')} new{failed}); "
        f"evaluations: {ev.get('computed')} computed, {ev.get('cached')} cached, {ev.get('failed')} failed "
        f"({night['seconds']:.0f} s)"
    )
    report = night.get("report")
    if isinstance(report, dict):
        lines.append(f"report: {report.get('url') or report.get('key')}")
        if report.get("headline"):
            lines.append(f"headline: {report['headline']}")
    elif report:
        lines.append(f"report: {report}")
    else:
        lines.append(f"fit: {night.get('fit')}")
    if story := summary.get("story"):
        checks = story["checks"]
        lines.append(f"story: {sum(checks.values())} of {len(checks)} claims hold")
        lines += [f"  {'ok  ' if ok else 'FAIL'} {claim}" for claim, ok in checks.items()]
    return lines
