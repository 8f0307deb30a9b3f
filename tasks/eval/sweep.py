"""One unit of nightly work: a checkpoint at one quant spec, scored on every dataset, into the store.

Incremental by construction: each (checkpoint, spec, dataset version) has its own output key,
    results/<checkpoint_fp>/<quant>/<eval_key>.parquet,  eval_key = hash(dataset name + sha,
                                                          kind, delimiter, evaluator version
                                                          [, calibration data: GPTQ specs only])
and only datasets whose key is missing are evaluated. A GPTQ spec's key also names its calibration
data (eval/calibration.py), so a new calibration set re-evaluates GPTQ specs only: round-to-nearest
keys do not change. A key is written atomically and never
changes, so a crashed run leaves nothing torn and the next run does exactly the missing work.
Beside each result, samples/<checkpoint_fp>/<quant>/<eval_key>.parquet keeps the per-example
scores; it is written first, so an existing result implies its samples exist.

Within one worker process, loaded models live in a small pool (memory, not threads, is the limit:
KBITLAW_MAX_MODELS, default 1) and tokenized datasets in a cache, so many specs of one checkpoint
cost one load and one tokenization. quantize_model always starts from the pristine weights.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

from kbitlaw.checkpoint_loading import load_model, load_tokenizer, pristine_device, resolve_device
from kbitlaw.checkpoints import TOKENIZER_FILES, Checkpoint
from kbitlaw.eval.calibration import CalibrationRef, calibration_tokens
from kbitlaw.eval.engine import EVALUATOR_VERSION, evaluate_prepared, max_length, prepare
from kbitlaw.eval.results import result_rows, results_frame
from kbitlaw.eval.scoring import Scorer
from kbitlaw.hashing import sha256_bytes
from kbitlaw.quant.fake import quantize_model
from kbitlaw.quant.spec import QuantSpec
from kbitlaw.store import Store, result_keys
from kbitlaw.store import result_key as store_result_key
from kbitlaw.store import samples_key as store_samples_key


@dataclass(frozen=True)
class DatasetRef:
    """A clean, validated dataset version, as tasks pass it around (JSON-able)."""

    name: str
    kind: str
    key: str  # datasets/clean/<name>/<sha>.parquet
    sha: str
    delimiter: str = " "


def eval_key(ds: DatasetRef, calibration: CalibrationRef | None = None) -> str:
    recipe = {
        "dataset": ds.name,
        "sha": ds.sha,
        "kind": ds.kind,
        "delimiter": ds.delimiter,
        "evaluator": EVALUATOR_VERSION,
    }
    if calibration is not None:  # GPTQ specs only: round-to-nearest keys stay as they were
        recipe["calibration"] = calibration.identity()
    return sha256_bytes(json.dumps(recipe, sort_keys=True).encode())[:24]


@functools.lru_cache(maxsize=1024)
def is_gptq(quant: str) -> bool:
    return QuantSpec.parse(quant).method == "gptq"


def spec_calibration(quant: str, calibration: CalibrationRef | None) -> CalibrationRef | None:
    """The calibration data a spec's results are keyed by: `calibration` for GPTQ, else None."""
    if not is_gptq(quant):
        return None
    if calibration is None:
        raise ValueError(f"{quant}: GPTQ needs calibration data (a calibration NAME[:N])")
    return calibration


def result_key(
    fingerprint: str, quant: str, ds: DatasetRef, calibration: CalibrationRef | None = None
) -> str:
    return store_result_key(fingerprint, quant, eval_key(ds, spec_calibration(quant, calibration)))


def samples_key(
    fingerprint: str, quant: str, ds: DatasetRef, calibration: CalibrationRef | None = None
) -> str:
    return store_samples_key(fingerprint, quant, eval_key(ds, spec_calibration(quant, calibration)))


def missing(
    store_keys: set[str],
    fingerprint: str,
    quant: str,
    datasets: list[DatasetRef],
    calibration: CalibrationRef | None = None,
) -> list[DatasetRef]:
    return [d for d in datasets if result_key(fingerprint, quant, d, calibration) not in store_keys]


# -- per-process caches --------------------------------------------------------------------------


class ModelPool:
    """At most `capacity` loaded checkpoints; one user of a model at a time (specs mutate it)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._entries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cond = threading.Condition()
        self.loads = 0  # how many times a checkpoint was loaded (tests and benchmarks read it)

    def acquire(self, ckpt: Checkpoint, device: str) -> dict[str, Any]:
        with self._cond:
            while True:
                entry = self._entries.get(ckpt.fingerprint)
                if entry is not None and not entry["busy"]:
                    entry["busy"] = True
                    self._entries.move_to_end(ckpt.fingerprint)
                    if entry["model"] is not None:
                        return entry
                    break  # a failed load left an empty slot: load again below
                if entry is None and self._make_room():
                    entry = self._entries[ckpt.fingerprint] = {"busy": True, "model": None, "tokenizer": None}
                    break
                self._cond.wait()
        try:  # load outside the pool lock: other checkpoints keep working meanwhile
            entry["tokenizer"] = load_tokenizer(ckpt)
            entry["model"] = load_model(ckpt, device=device)
            self.loads += 1
        except BaseException:
            with self._cond:
                self._entries.pop(ckpt.fingerprint, None)
                self._cond.notify_all()
            raise
        return entry

    def _make_room(self) -> bool:
        if len(self._entries) < self.capacity:
            return True
        idle = next((fp for fp, e in self._entries.items() if not e["busy"]), None)
        if idle is None:
            return False
        del self._entries[idle]  # the model is freed when its last reference goes
        return True

    def release(self, ckpt: Checkpoint) -> None:
        with self._cond:
            entry = self._entries.get(ckpt.fingerprint)
            if entry is not None:
                entry["busy"] = False
            self._cond.notify_all()


POOL = ModelPool(int(os.environ.get("KBITLAW_MAX_MODELS", "1")))
_PREPARED: OrderedDict[tuple, Any] = OrderedDict()
_PREPARED_LOCK = threading.Lock()
_CALIBRATION: OrderedDict[tuple, Any] = OrderedDict()


def _tokenizer_sha(ckpt: Checkpoint) -> str:
    return sha256_bytes(json.dumps([f for f in ckpt.files if f[0] in TOKENIZER_FILES]).encode())


def _prepared(store: Store, ds: DatasetRef, ckpt: Checkpoint, tokenizer: Any, window: int):
    """Tokenize a dataset once per tokenizer and window, in this process."""
    key = (_tokenizer_sha(ckpt), ds.sha, ds.name, window)
    with _PREPARED_LOCK:
        if key in _PREPARED:
            _PREPARED.move_to_end(key)
            return _PREPARED[key]
    df = store.read_parquet(ds.key)
    prepared = prepare(df, ds.kind, tokenizer, window, name=ds.name, delimiter=ds.delimiter)
    with _PREPARED_LOCK:
        _PREPARED[key] = prepared
        while len(_PREPARED) > 64:
            _PREPARED.popitem(last=False)
    return prepared


def _calibration(ref: CalibrationRef, ckpt: Checkpoint, tokenizer: Any, window: int):
    """Calibration token ids, once per tokenizer and window in this process."""
    key = (_tokenizer_sha(ckpt), ref.sha, ref.n, window)
    with _PREPARED_LOCK:
        if key in _CALIBRATION:
            _CALIBRATION.move_to_end(key)
            return _CALIBRATION[key]
    tokens = calibration_tokens(ref, tokenizer, window)
    with _PREPARED_LOCK:
        _CALIBRATION[key] = tokens
        while len(_CALIBRATION) > 8:
            _CALIBRATION.popitem(last=False)
    return tokens


def plan(
    store: Store,
    checkpoints: list[dict],
    specs: list[str],
    datasets: list[DatasetRef],
    width: int,
    calibration: CalibrationRef | None = None,
) -> list[tuple[dict, str, list[DatasetRef], list[str]]]:
    """Every (checkpoint, spec) with its missing datasets, ordered for model reuse: checkpoints in
    groups of `width` (one per worker), specs interleaved within a group. GPTQ specs' results are
    looked up under their `calibration` data."""
    have = set(result_keys(store))
    work = []
    for start in range(0, len(checkpoints), width):
        group = checkpoints[start : start + width]
        for spec in specs:
            for ckpt in group:
                todo = missing(have, ckpt["fingerprint"], spec, datasets, calibration)
                work.append((ckpt, spec, todo, [d.name for d in datasets if d not in todo]))
    return work


# -- the unit of work ------------------------------------------------------------------------------


def evaluate_checkpoint_spec(
    store: Store,
    ckpt: Checkpoint,
    spec: str,
    datasets: list[DatasetRef],
    *,
    batch_size: int = 32,
    device: str | None = None,
    calibration: CalibrationRef | None = None,
) -> dict[str, Any]:
    """Evaluate the datasets whose results are missing; returns {"computed": [...], "cached": [...]}.
    A GPTQ spec is calibrated on `calibration` (required for it, ignored otherwise). `device`: auto,
    cpu, cuda, cuda:N, resolved here, in the process that runs the work (a Dask worker may have
    GPUs its scheduler lacks); one this machine lacks is a ValueError line."""
    started = time.perf_counter()
    calibration = spec_calibration(spec, calibration)
    todo = [d for d in datasets if not store.exists(result_key(ckpt.fingerprint, spec, d, calibration))]
    done = [d.name for d in datasets if d not in todo]
    if not todo:
        return {"checkpoint": ckpt.id, "quant": spec, "computed": [], "cached": done, "seconds": 0.0}
    entry = POOL.acquire(ckpt, resolve_device(device))
    try:
        model, tokenizer = entry["model"], entry["tokenizer"]
        window = max_length(model, tokenizer)
        prepared = [_prepared(store, d, ckpt, tokenizer, window) for d in todo]
        tokens = _calibration(calibration, ckpt, tokenizer, window) if calibration else None
        mode = calibration.mode if calibration else "sequential"
        report = quantize_model(
            model, spec, calibration=tokens, calibration_mode=mode, pristine_device=pristine_device(model)
        )
        columns = report.columns() | {"calibration": str(calibration) if calibration else None}
        scorer = Scorer(model, batch_size=batch_size)
        for ds, prep in zip(todo, prepared, strict=True):
            metric_rows, samples = evaluate_prepared(model, prep, scorer=scorer, samples=True)
            rows = result_rows(ckpt, columns, metric_rows, ds.sha)
            store.write_parquet(samples_key(ckpt.fingerprint, spec, ds, calibration), samples)  # first
            store.write_parquet(result_key(ckpt.fingerprint, spec, ds, calibration), results_frame(rows))
    finally:
        POOL.release(ckpt)
    seconds = time.perf_counter() - started  # the model work: load, quantize, evaluate, write
    return {
        "checkpoint": ckpt.id,
        "quant": spec,
        "computed": [d.name for d in todo],
        "cached": done,
        "seconds": seconds,
    }


def checkpoint_dict(ckpt: Checkpoint) -> dict[str, Any]:
    return asdict(ckpt)


def checkpoint_from_dict(d: dict[str, Any]) -> Checkpoint:
    return Checkpoint(**{**d, "files": tuple(tuple(f) for f in d["files"])})
