"""Results in, fits out: read results (a file or the store) and fit incrementally into the store.

A fit is keyed by results_sha, the hash of the canonical result rows (table.results_sha):
- unchanged results: the stored fits/<sha>/fit.json is read back, nothing is refit;
- changed results: the laws are refit, warm-started from the previous fit that fits/latest.json
  points at, and written as fits/<sha>/fit.parquet then fits/<sha>/fit.json (the JSON is written
  last, so its presence means the fit is complete).
A stored fit made by another law version or fit config is not reused (and is overwritten: its
key names the results, and the fit of those results under this code is what belongs there).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from kbitlaw.law.document import LAW_VERSION, FitConfig, fit_laws
from kbitlaw.law.numerics.paired import read_samples_store
from kbitlaw.law.runs import looks_like_runs, runs_to_results
from kbitlaw.law.table import REQUIRED_COLUMNS, ResultsError, normalise, require_usable, results_sha
from kbitlaw.store import LATEST_FIT, Store, StoreError, clean_keys, fit_keys, result_keys

LATEST = LATEST_FIT
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredFit:
    doc: dict[str, Any]
    refitted: bool  # False: read back from the store unchanged
    key: str  # the fit.json key


def read_results_file(path: str | Path) -> pl.DataFrame:
    """A Parquet or CSV results file, normalised; ResultsError('<path>: <cause>') if unusable.
    A table of published runs (size, tokens or compute, loss: law/runs.py) is read as results."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            df = pl.read_parquet(path)
        elif suffix == ".csv":
            df = pl.read_csv(path, infer_schema_length=None)
        else:
            raise ResultsError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .parquet or .csv")
    except ResultsError:
        raise
    except Exception as exc:
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResultsError(f"{path}: cannot read as {suffix.lstrip('.')}: {cause}") from exc
    try:
        if looks_like_runs(df.columns) and not set(REQUIRED_COLUMNS) <= set(df.columns):
            df, excluded = runs_to_results(df, path.stem)
            if excluded:
                log.info("%s: %d runs marked excluded are left out of the fit", path, excluded)
        df = normalise(df)
    except ResultsError as exc:
        raise ResultsError(f"{path}: {exc}") from exc
    if df.height == 0:
        raise ResultsError(f"{path}: no result rows")
    require_usable(df, str(path))
    return df


def read_result_frames(store: Store, keys: list[str] | None = None) -> dict[str, pl.DataFrame]:
    """Each results key's rows, normalised (default: every results/<fp>/<quant>/<eval_key>.parquet).

    The nightly passes the keys of the current checkpoints and dataset versions, so results of a
    dataset version that has since changed are not mixed into the fit.
    """
    if keys is None:
        keys = result_keys(store)
    if not keys:
        raise ResultsError(f"{store.uri}: no results under results/")
    frames = {}
    for key, data in store.read_many(sorted(keys)).items():
        try:
            frames[key] = normalise(pl.read_parquet(io.BytesIO(data)))
        except ResultsError as exc:
            raise ResultsError(f"{store.url(key)}: {exc}") from exc
    return frames


def read_results_store(store: Store, keys: list[str] | None = None) -> pl.DataFrame:
    """The given results keys' rows (default: every result in the store) in one table."""
    return pl.concat(read_result_frames(store, keys).values(), how="diagonal_relaxed")


def default_chance(results: pl.DataFrame, store: Store | None = None) -> dict[str, float]:
    """Chance accuracy per dataset where it is known, so the threshold law need not fit it:
    0 for cloze (a greedy whole-word match is not guessed), and for a multiple-choice dataset
    whose clean file datasets/clean/<name>/<dataset_sha>.parquet is in the store, the mean of
    1/len(choices) over its examples. Any other dataset keeps chance as a free parameter."""
    chance: dict[str, float] = {}
    cols = ["dataset", "kind"] + (["dataset_sha"] if "dataset_sha" in results.columns else [])
    found = (
        results.filter(pl.col("kind").is_in(["cloze", "multiple_choice"])).select(cols).unique().sort(cols)
    )
    for row in found.iter_rows(named=True):
        name = row["dataset"]
        if row["kind"] == "cloze":
            chance[name] = 0.0
        elif store is not None and name not in chance and row.get("dataset_sha"):
            key = clean_keys(name, row["dataset_sha"])["clean"]
            try:
                if store.exists(key):
                    choices = store.read_parquet(key)["choices"].list.len()
                    if choices.len() and (choices > 0).all():
                        chance[name] = float((1.0 / choices).mean())
            except (
                StoreError,
                OSError,
                ValueError,
                pl.exceptions.PolarsError,
            ):  # odd file: chance stays free
                continue
    return chance


def _same_settings(doc: dict[str, Any], config: FitConfig) -> bool:
    stored = json.dumps(doc.get("config"), sort_keys=True)
    wanted = json.dumps(json.loads(json.dumps(config.describe())), sort_keys=True)
    return doc.get("law_version") == LAW_VERSION and stored == wanted


def _previous_doc(store: Store) -> dict[str, Any] | None:
    """The fit that fits/latest.json points at, if it is still readable."""
    if not store.exists(LATEST):
        return None
    try:
        json_key, _ = fit_keys(store.read_json(LATEST)["results_sha"])
        return store.read_json(json_key)
    except (KeyError, ValueError, FileNotFoundError):
        return None


def fit_store(store: Store, config: FitConfig | None = None, keys: list[str] | None = None) -> StoredFit:
    """Fit the store's results (or just `keys`) unless this exact fit is stored already;
    fits/latest.json then points at it. Without a config: the defaults, with the chance levels the
    store knows (default_chance)."""
    frames = read_result_frames(store, keys)
    results = pl.concat(frames.values(), how="diagonal_relaxed")
    require_usable(results, f"{store.uri}/results")
    config = config or FitConfig(chance=default_chance(results, store))
    sha = results_sha(results)
    json_key, parquet_key = fit_keys(sha)
    stored = store.read_json(json_key) if store.exists(json_key) else None
    if stored is not None and _same_settings(stored, config):
        outcome = StoredFit(stored, refitted=False, key=json_key)
    else:
        samples = read_samples_store(store, frames)
        fit = fit_laws(results, config, previous=_previous_doc(store), samples=samples)
        store.write_parquet(parquet_key, fit.table)
        store.write_json(json_key, fit.doc)  # last: its presence means the fit is complete
        outcome = StoredFit(fit.doc, refitted=True, key=json_key)
    pointer = {"results_sha": sha, "fit": json_key, "table": parquet_key}
    if not store.exists(LATEST) or store.read_json(LATEST) != pointer:
        store.write_json(LATEST, pointer)
    return outcome
