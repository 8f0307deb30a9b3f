"""Datasets: spec files -> raw rows -> clean canonical Parquet + quarantine, content-addressed.

A spec (`datasets/<name>.yaml`) names a kind, a source and how to map it:
    name: piqa
    kind: multiple_choice          # multiple_choice | cloze | perplexity
    source: hf://datasets/ybisk/piqa/data/validation.parquet   # or builtin:<generator>, a path, s3://...
    adapter: piqa                  # or `columns: {canonical: raw}`; builtin sources need neither
    params: {n: 500, seed: 0, difficulty: 1}    # builtin generators only
    delimiter: " "                 # between context and choice
    max_examples: 1000             # first N raw rows (after generation/reading)
    min_rows: 100                  # validation fails below this
    chance: 0.5                    # accuracy of random guessing (the law fits need it)
    max_chars: 20000
    expectations: []               # extra Great Expectations, {type: ..., kwargs: {...}}
The clean dataset's key is a hash of the raw input (its bytes, or generator + parameters) and the
cleaning code version: running again with unchanged inputs reads what is stored, never rewrites.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from kbitlaw.data import world
from kbitlaw.data.adapters import KIND, adapt
from kbitlaw.data.cleaning import CANONICAL, CLEANING_VERSION, OPTIONAL, clean_frame, summary
from kbitlaw.eval.engine import SCHEMAS, EvaluationError
from kbitlaw.store import Store, clean_keys, sha256_bytes

# Where the builtin dataset specs are: shipped inside the package (a normal install), or the
# checkout's datasets/ folder (an editable install maps the package `kbitlaw` to tasks/).
_PACKAGE = Path(__file__).resolve().parents[1]
BUILTIN_SPECS = next(
    (p for p in (_PACKAGE / "dataset_specs", _PACKAGE.parent / "datasets") if any(p.glob("*.yaml"))),
    _PACKAGE / "dataset_specs",
)


def dataset_spec_dir(directory: str | Path | None = None) -> Path:
    """The directory of dataset specs: `directory` if given, else $KBITLAW_DATASET_SPECS, else
    ./datasets when it holds spec files, else the builtin specs shipped with kbitlaw."""
    if directory:
        return Path(directory)
    if os.environ.get("KBITLAW_DATASET_SPECS"):
        return Path(os.environ["KBITLAW_DATASET_SPECS"])
    local = Path("datasets")
    return local if any(local.glob("*.yaml")) else BUILTIN_SPECS


_FIELDS = {
    "name",
    "kind",
    "source",
    "adapter",
    "columns",
    "params",
    "delimiter",
    "max_examples",
    "min_rows",
    "chance",
    "max_chars",
    "expectations",
    "description",
}


class DatasetError(ValueError):
    """Bad dataset input: one line naming the file (and row or field) and the cause."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: str
    source: str
    adapter: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    delimiter: str = " "
    max_examples: int | None = None
    min_rows: int = 1
    chance: float | None = None
    max_chars: int = 20_000
    expectations: tuple[dict, ...] = ()
    path: str = ""  # the spec file, for error messages


def parse_dataset_spec(obj: Any, path: str) -> DatasetSpec:
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: a dataset spec must be a mapping")
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        raise DatasetError(f"{path}: unknown field(s) {', '.join(unknown)}")
    for required in ("name", "kind", "source"):
        if not obj.get(required):
            raise DatasetError(f"{path}: missing field '{required}'")
    kind = obj["kind"]
    if kind not in CANONICAL:
        raise DatasetError(f"{path}: field 'kind': {kind!r} is not one of {', '.join(CANONICAL)}")
    adapter = obj.get("adapter")
    if adapter and KIND.get(adapter) not in (None, kind):
        raise DatasetError(f"{path}: adapter {adapter!r} gives {KIND[adapter]} data, not {kind}")
    chance = obj.get("chance")
    if chance is not None and not 0 <= float(chance) < 1:
        raise DatasetError(f"{path}: field 'chance' must be in [0, 1), got {chance}")
    try:
        Store("/").path(clean_keys(obj["name"], "x")["clean"])  # the name becomes a key: validate it
    except ValueError as exc:
        raise DatasetError(f"{path}: field 'name': {exc}") from None
    return DatasetSpec(
        name=str(obj["name"]),
        kind=kind,
        source=str(obj["source"]),
        adapter=adapter,
        columns=dict(obj.get("columns") or {}),
        params=dict(obj.get("params") or {}),
        delimiter=str(obj.get("delimiter", " ")),
        max_examples=obj.get("max_examples"),
        min_rows=int(obj.get("min_rows", 1)),
        chance=None if chance is None else float(chance),
        max_chars=int(obj.get("max_chars", 20_000)),
        expectations=tuple(obj.get("expectations") or ()),
        path=path,
    )


def load_dataset_specs(directory: str | Path | None = None) -> dict[str, DatasetSpec]:
    """Every `*.yaml` dataset spec in a directory (default: dataset_spec_dir()), by name."""
    specs = {}
    for path in sorted(dataset_spec_dir(directory).glob("*.yaml")):
        try:
            obj = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        spec = parse_dataset_spec(obj, str(path))
        if spec.name in specs:
            raise DatasetError(
                f"{path}: dataset name {spec.name!r} already defined in {specs[spec.name].path}"
            )
        specs[spec.name] = spec
    return specs


# -- raw input ---------------------------------------------------------------------------------


def _read_bytes(source: str) -> bytes:
    if source.startswith("s3://"):
        parent, _, name = source.rpartition("/")
        return Store(parent).read_bytes(name)
    path = Path(source)
    if not path.is_file():
        raise DatasetError(f"{source}: no such file")
    return path.read_bytes()


def _parse_table(data: bytes, source: str) -> pl.DataFrame:
    suffix = Path(source).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json", ".csv"):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise DatasetError(
                f"{source}: not UTF-8 text (invalid byte on line {line}, offset {exc.start})"
            ) from None
    try:
        if suffix in (".jsonl", ".ndjson"):
            return pl.read_ndjson(io.BytesIO(data))
        if suffix == ".json":
            obj = json.loads(data)
            return pl.DataFrame(obj if isinstance(obj, list) else obj.get("data", obj))
        if suffix == ".parquet":
            return pl.read_parquet(io.BytesIO(data))
        if suffix == ".csv":
            return pl.read_csv(io.BytesIO(data), infer_schema_length=10_000)
    except Exception as exc:
        raise DatasetError(
            f"{source}: cannot read ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    raise DatasetError(f"{source}: unsupported file type {suffix!r} (use .jsonl, .json, .parquet or .csv)")


def raw_input(spec: DatasetSpec) -> tuple[pl.DataFrame, str]:
    """(raw frame with a `row` index, input sha) for a spec; builtin sources are generated."""
    if spec.source.startswith("builtin:"):
        generator = spec.source.removeprefix("builtin:")
        params = {"n": 500, "seed": 0, "difficulty": 1, **spec.params}
        if spec.max_examples:
            params["n"] = min(params["n"], spec.max_examples)
        try:
            rows = world.suite(generator, **params)
        except (ValueError, TypeError) as exc:
            raise DatasetError(f"{spec.path}: field 'source'/'params': {exc}") from None
        sha = sha256_bytes(json.dumps({"generator": generator, "params": params}, sort_keys=True).encode())
        return pl.DataFrame(rows).with_row_index("row"), sha
    if spec.source.startswith("hf://"):
        try:
            df = pl.read_parquet(spec.source)  # needs network; polars reads hf:// itself
        except Exception as exc:
            raise DatasetError(f"{spec.source}: cannot read ({type(exc).__name__})") from None
        sha = sha256_bytes(df.write_ndjson().encode())
    else:
        data = _read_bytes(spec.source)
        df, sha = _parse_table(data, spec.source), sha256_bytes(data)
    if spec.max_examples:
        df = df.head(spec.max_examples)
    return df.with_row_index("row"), sha


def canonical(raw: pl.DataFrame, spec: DatasetSpec) -> pl.DataFrame:
    """Map raw rows to the canonical columns (adapter, column mapping, or already canonical)."""
    if spec.adapter:
        return adapt(raw, spec.adapter, spec.source)
    mapping = {canon: spec.columns.get(canon, canon) for canon in CANONICAL[spec.kind]}
    if "continuation" in spec.columns or "continuation" in raw.columns:
        mapping["continuation"] = spec.columns.get("continuation", "continuation")
    missing = [raw_col for raw_col in mapping.values() if raw_col not in raw.columns]
    if missing:
        raise DatasetError(
            f"{spec.source}: missing column {', '.join(map(repr, missing))} for a {spec.kind} dataset"
        )
    exprs = [pl.col(raw_col).alias(canon) for canon, raw_col in mapping.items()]
    out = raw.select("row", *exprs)
    casts = {"id": pl.String}
    if spec.kind == "multiple_choice":
        casts |= {"gold": pl.Int64}
    try:
        return out.with_columns([pl.col(c).cast(t, strict=False) for c, t in casts.items()])
    except pl.exceptions.PolarsError as exc:
        raise DatasetError(f"{spec.source}: column types: {str(exc).splitlines()[0]}") from None


# -- the clean dataset in the store -------------------------------------------------------------


@dataclass(frozen=True)
class CleanDataset:
    name: str
    kind: str
    sha: str  # the content address: hash of raw input + cleaning version + mapping
    key: str
    quarantine_key: str
    summary: dict
    cached: bool


def clean_key(spec: DatasetSpec, input_sha: str) -> str:
    recipe = {
        "input": input_sha,
        "cleaning": CLEANING_VERSION,
        "kind": spec.kind,
        "adapter": spec.adapter,
        "columns": spec.columns,
        "max_chars": spec.max_chars,
        "max_examples": spec.max_examples,
    }
    return sha256_bytes(json.dumps(recipe, sort_keys=True).encode())[:32]


def clean_dataset(store: Store, spec: DatasetSpec) -> CleanDataset:
    """Clean one dataset into the store (or read the stored result when the inputs are unchanged)."""
    raw, input_sha = raw_input(spec)
    sha = clean_key(spec, input_sha)
    keys = clean_keys(spec.name, sha)
    key, qkey, skey = keys["clean"], keys["quarantine"], keys["summary"]
    if store.exists(skey) and store.exists(key):
        return CleanDataset(spec.name, spec.kind, sha, key, qkey, store.read_json(skey), cached=True)
    clean, quarantine = clean_frame(canonical(raw, spec), spec.kind, max_chars=spec.max_chars)
    info = summary(spec.name, raw, clean, quarantine) | {
        "kind": spec.kind,
        "sha": sha,
        "source": spec.source,
        "input_sha": input_sha,
    }
    store.write_parquet(key, clean)
    store.write_parquet(qkey, quarantine)
    store.write_json(skey, info)  # written last: its presence means the dataset is complete
    return CleanDataset(spec.name, spec.kind, sha, key, qkey, info, cached=False)


# -- ad-hoc files for `kbitlaw evaluate` -------------------------------------------------------


def frame_sha(df: pl.DataFrame) -> str:
    """Content hash of a dataset: its rows as NDJSON, in order."""
    return sha256_bytes(df.write_ndjson().encode())


def read_dataset_file(
    path: str, kind: str | None = None, limit: int | None = None
) -> tuple[pl.DataFrame, str]:
    """Read a canonical dataset from jsonl / parquet / csv; returns (frame, kind).

    In CSV, `choices` is a JSON list in one cell, e.g. ["yes", "no"].
    """
    if not Path(path).is_file():
        raise EvaluationError(f"{path}: no such dataset file")
    try:
        df = _parse_table(Path(path).read_bytes(), path)
    except DatasetError as exc:
        raise EvaluationError(str(exc)) from None
    if "choices" in df.columns and df.schema["choices"] == pl.String:  # CSV: a JSON list per cell
        df = df.with_columns(pl.col("choices").map_elements(json.loads, return_dtype=pl.List(pl.String)))
    return read_dataset_frame(df, kind, limit, source=path)


def read_dataset_frame(
    df: pl.DataFrame, kind: str | None = None, limit: int | None = None, *, source: str = "dataset"
) -> tuple[pl.DataFrame, str]:
    """A frame in a canonical schema, checked and cast; returns (frame, kind). `source` names it
    in errors."""
    if kind is None:
        if not {"context", "choices", "gold"} <= set(df.columns):
            raise EvaluationError(f"{source}: cannot tell cloze from perplexity data: pass --kind")
        kind = "multiple_choice"
    if kind not in SCHEMAS:
        raise EvaluationError(f"{source}: unknown kind {kind!r} (expected one of {', '.join(SCHEMAS)})")
    missing = [c for c in SCHEMAS[kind] if c not in df.columns]
    if missing:
        raise EvaluationError(f"{source}: missing column(s) {', '.join(missing)} for kind {kind}")
    extra = [c for c in OPTIONAL.get(kind, ()) if c in df.columns]
    df = df.select([*SCHEMAS[kind], *extra]).with_columns(pl.col("id").cast(pl.String))
    if kind == "multiple_choice":
        df = df.with_columns(pl.col("gold").cast(pl.Int64))
    return (df.head(limit) if limit else df), kind
