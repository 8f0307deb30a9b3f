"""`kbitlaw demo`: build the embedded demo family if missing, then run the nightly flow over it.

The nightly flow cleans and validates the builtin datasets itself; the demo only adds the
checkpoints (kbitlaw.demo.train: a GPT-NeoX family trained here, cached in the store) and a grid small
enough for a first run on a laptop CPU, yet with the precisions the laws need: 16-bit, 8, 4 and 3
bits, integer and a 4-bit float type, with and without blocks.

    summary = run_demo(".kbitlaw/store")                 # build what is missing + nightly
    summary = run_demo(store, arrive=True)               # publish the next round of checkpoints first
    summary = run_demo(store, seed=1)                    # another seed: its own family, demo-s1
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from kbitlaw.demo.family import TrainConfig, family_sizes
from kbitlaw.demo.family_store import publish_next, staged_rounds
from kbitlaw.demo.story import story
from kbitlaw.demo.train import BuildReport, Progress, build_family
from kbitlaw.store import CHECKPOINTS, DEFAULT_STORE, Store, checkpoint_prefix

DEMO_FAMILY = "demo"
DEMO_GRID = "demo"  # kbitlaw.quant.spec.GRIDS["demo"]


def demo_family(seed: int = 0) -> str:
    """The family a seed trains into: `demo` for seed 0, `demo-s<S>` for any other, so a second
    seed never mixes its checkpoints with the first's in the same store."""
    if seed < 0:
        raise ValueError(f"--seed must be 0 or more, got {seed}")
    return DEMO_FAMILY if seed == 0 else f"{DEMO_FAMILY}-s{seed}"


def demo_log_path(store: str | None = None, now: datetime | None = None) -> Path:
    """Where `kbitlaw demo` writes what libraries print: `<store>/logs/demo-<time>.log` for a local
    store, `.kbitlaw/logs/demo-<time>.log` when the store is remote (s3://)."""
    uri = str(store) if store is not None else os.environ.get("KBITLAW_STORE") or DEFAULT_STORE
    local = "://" not in uri or uri.startswith("file://")
    folder = Path(uri.removeprefix("file://")).expanduser() if local else Path(".kbitlaw")
    return folder.resolve() / "logs" / f"demo-{(now or datetime.now()):%Y%m%d-%H%M%S}.log"


class Display:
    """The demo's one progress display (rich, on a terminal): a bar per size while the family
    trains, then a bar per night's evaluations, each with done/total and the time left."""

    def __init__(self, bars: Any) -> None:
        self.bars = bars
        self.rows: dict[str, Any] = {}

    def _row(self, name: str, total: float | None, note: str = "") -> Any:
        if name not in self.rows:
            self.rows[name] = self.bars.add_task(name, total=total, note=note)
        return self.rows[name]

    def training(self, p: Progress) -> None:
        """build_family's progress callback."""
        if p.phase in ("tokenizer", "corpus"):
            note = "training the tokenizer" if p.phase == "tokenizer" else "encoding the corpus"
            self.bars.update(self._row("data", None), note=note)
        elif p.size and p.total and p.phase != "publish":
            if "data" in self.rows:  # training has begun: the data is ready
                self.bars.update(self.rows["data"], total=1, completed=1, note="ready")
            row = self._row(p.size, p.total)
            if p.phase == "cached" or p.loss is not None:
                self.bars.update(row, note="cached" if p.phase == "cached" else f"loss {p.loss:.3f}")
            self.bars.update(row, total=p.total, completed=p.step)

    @contextmanager
    def night(self, label: str) -> Iterator[Callable[[int, int], None]]:
        """A row for one nightly run: preparing, then done/total evaluations, then the fit; yields
        the nightly flow's evaluation callback, (done, total)."""
        row = self._row(label, None, "datasets")
        seen = [0]  # the evaluations' total (0: nothing to evaluate)

        def evaluated(done: int, total: int) -> None:
            seen[0] = total
            note = "evaluations" if done < total else "fit + report" if total else "nothing new; fit + report"
            self.bars.update(row, total=total or 1, completed=done if total else 1, note=note)

        yield evaluated
        self.bars.update(row, total=seen[0] or 1, completed=seen[0] or 1, note="done")


@contextmanager
def progress_display(enabled: bool, stream: TextIO | None = None) -> Iterator[Display | None]:
    """The Display on `stream` (default: stderr) while the block runs, or None when not enabled.
    It never takes over stdout or stderr: what libraries print stays where the caller sent it."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as Bars

    bars = Bars(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(elapsed_when_finished=True),
        TextColumn("{task.fields[note]}"),
        console=Console(file=stream or sys.stderr),
        redirect_stdout=False,
        redirect_stderr=False,
    )
    with bars:
        yield Display(bars)


def run_demo(
    store: str | None = None,
    *,
    arrive: bool = False,
    grid: str = DEMO_GRID,
    workers: int | None = None,
    sizes: str | None = None,
    budget: int | None = None,
    seed: int = 0,
    show_progress: bool | None = None,
    progress_stream: TextIO | None = None,
) -> dict[str, Any]:
    """Build the family (what is missing) and run nightly; returns {"build", "first_night",
    "nightly", "story"}. New checkpoints are published in rounds: by default all but the last
    round, a night (`first_night`), the last round and a night, so the second refit checks the
    joint law's predictions of the last checkpoints (the report's running check); arrive=True
    publishes one round and runs one night.

    seed: the training seed (TrainConfig.seed); it trains into its own family, demo_family(seed).
    show_progress: the progress display on `progress_stream` (default stderr; shown by default when
    stderr is a terminal)."""
    s = Store(store)
    family = demo_family(seed)
    cores = len(os.sched_getaffinity(0))
    workers = workers or cores
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    config = TrainConfig(seed=seed, **({"budget_tokens": budget} if budget else {}))
    began = time.perf_counter()
    with progress_display(show_progress, progress_stream) as display:
        # New checkpoints are staged and published in rounds, as a training run's would arrive.
        report: BuildReport = build_family(
            s,
            family,
            sizes=family_sizes(sizes),
            config=config,
            arrive=True,
            workers=workers,
            progress=display.training if display else None,
        )
        built = time.perf_counter()
        first_night = None
        if not arrive:
            # Everything but the last round, a night, then the last round and another night: the
            # second night's refit checks what the first night's law predicted for the new checkpoints.
            while staged_rounds(s, family) > 1:
                report.published += publish_next(s, family)
            if staged_rounds(s, family) == 1:
                if any(k.endswith("/config.json") for k in s.list(checkpoint_prefix(CHECKPOINTS, family))):
                    first_night = run_nightly(s, grid, workers, display, "night 1")
                    first_night["seconds"] = round(time.perf_counter() - built, 2)
                report.published += publish_next(s, family)
        second = time.perf_counter()
        summary = run_nightly(s, grid, workers, display, "night 2" if first_night else "nightly")
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
        "story": _story_or_none(s, family),
    }


def _story_or_none(store: Store, family: str = DEMO_FAMILY) -> dict[str, Any] | None:
    try:
        return story(store, family)
    except Exception as exc:  # the story is a summary of the run; it never fails the demo
        logging.getLogger("kbitlaw").warning("story check skipped: %s", exc)
        return None


def run_nightly(
    store: Store, grid: str, workers: int, display: Display | None = None, label: str = "nightly"
) -> dict[str, Any]:
    """The nightly flow over the store's checkpoints, `workers` evaluations side by side (each with
    one torch thread and its own loaded model: the demo's models are small); its evaluations are
    counted on `display`'s row `label`."""
    import torch

    from kbitlaw.eval import sweep
    from kbitlaw.flows import nightly as nightly_module

    sweep.POOL.capacity = max(sweep.POOL.capacity, workers)
    threads = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(1)
    with display.night(label) if display else nullcontext() as evaluated:
        nightly_module.EVALUATION_PROGRESS = evaluated
        try:
            flow = nightly_module.nightly.with_options(
                task_runner=nightly_module.task_runner("thread", workers)
            )
            state = flow(store=store.uri, grid=grid, workers=workers, return_state=True)
        finally:
            nightly_module.EVALUATION_PROGRESS = None
            torch.set_num_threads(threads)
    return nightly_module.run_summary(state)


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
