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

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from kbitlaw.data import world
from kbitlaw.data.adapters import KIND, adapt
from kbitlaw.data.cleaning import CLEANING_VERSION, clean_frame, summary
from kbitlaw.data.files import DatasetError, parse_table, read_bytes, read_dataset_file, read_dataset_frame
from kbitlaw.hashing import sha256_bytes
from kbitlaw.store import Store, clean_keys
from kbitlaw.vocab import DATASET_COLUMNS, KINDS

__all__ = [  # read_dataset_* and DatasetError live in data/files.py; importing them from here still works
    "BUILTIN_SPECS",
    "CleanDataset",
    "DatasetError",
    "DatasetSpec",
    "DatasetSpecs",
    "canonical",
    "clean_dataset",
    "clean_key",
    "dataset_spec_dir",
    "frame_sha",
    "load_dataset_specs",
    "parse_dataset_spec",
    "raw_input",
    "read_dataset_file",
    "read_dataset_frame",
]
log = logging.getLogger("kbitlaw")

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


def _field(obj: dict, name: str, cast, default, path: str):
    value = obj.get(name, default)
    if value is None:
        return None
    try:
        return cast(value)
    except (TypeError, ValueError):
        expected = "an integer" if cast is int else "a number"
        raise DatasetError(f"{path}: field '{name}': {value!r} is not {expected}") from None


def parse_dataset_spec(obj: Any, path: str) -> DatasetSpec:
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: a dataset spec must be a mapping")
    unknown = sorted(map(str, set(obj) - _FIELDS))
    if unknown:
        raise DatasetError(f"{path}: unknown field(s) {', '.join(unknown)}")
    for required in ("name", "kind", "source"):
        if not obj.get(required):
            raise DatasetError(f"{path}: missing field '{required}'")
    kind = obj["kind"]
    if kind not in KINDS:
        raise DatasetError(f"{path}: field 'kind': {kind!r} is not one of {', '.join(KINDS)}")
    adapter = obj.get("adapter")
    if adapter and KIND.get(adapter) not in (None, kind):
        raise DatasetError(f"{path}: adapter {adapter!r} gives {KIND[adapter]} data, not {kind}")
    chance = _field(obj, "chance", float, None, path)
    if chance is not None and not 0 <= chance < 1:
        raise DatasetError(f"{path}: field 'chance' must be in [0, 1), got {chance}")
    name = str(obj["name"])
    try:
        Store("/").path(clean_keys(name, "x")["clean"])  # the name becomes a key: validate it
    except ValueError as exc:
        raise DatasetError(f"{path}: field 'name': {exc}") from None
    for mapping in ("columns", "params"):
        if not isinstance(obj.get(mapping) or {}, dict):
            raise DatasetError(f"{path}: field '{mapping}' must be a mapping")
    if not isinstance(obj.get("expectations") or [], list):
        raise DatasetError(f"{path}: field 'expectations' must be a list")
    return DatasetSpec(
        name=name,
        kind=kind,
        source=str(obj["source"]),
        adapter=adapter,
        columns=dict(obj.get("columns") or {}),
        params=dict(obj.get("params") or {}),
        delimiter=str(obj.get("delimiter", " ")),
        max_examples=_field(obj, "max_examples", int, None, path),
        min_rows=_field(obj, "min_rows", int, 1, path),
        chance=chance,
        max_chars=_field(obj, "max_chars", int, 20_000, path),
        expectations=tuple(obj.get("expectations") or ()),
        path=path,
    )


class DatasetSpecs(dict):
    """Dataset specs by name, plus `errors`: {name: one-line message} for each spec file that could
    not be loaded (named by its `name` field when it has one, else by the file's stem), so that
    one bad spec fails its own dataset, never the others."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: dict[str, str] = {}


def _spec_key(obj: Any, path: Path) -> str:
    name = obj.get("name") if isinstance(obj, dict) else None
    return str(name) if isinstance(name, str | int) and str(name) else path.stem


def load_dataset_specs(directory: str | Path | None = None) -> DatasetSpecs:
    """Every `*.yaml` dataset spec in a directory (default: dataset_spec_dir()), by name; a file
    that is not a valid spec goes to `.errors` (a name defined twice is an error of that name)."""
    specs, seen = DatasetSpecs(), {}
    for path in sorted(dataset_spec_dir(directory).glob("*.yaml")):
        obj = None
        try:
            obj = yaml.safe_load(path.read_text(encoding="utf-8"))
            spec = parse_dataset_spec(obj, str(path))
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
            specs.errors[path.stem] = f"{path}: not valid YAML ({str(exc).splitlines()[0]})"
            continue
        except DatasetError as exc:
            specs.errors[_spec_key(obj, path)] = str(exc)
            continue
        if spec.name in seen:
            specs.pop(spec.name, None)
            specs.errors[spec.name] = (
                f"{path}: dataset name {spec.name!r} already defined in {seen[spec.name]}"
            )
            continue
        seen[spec.name] = str(path)
        specs[spec.name] = spec
    for name in specs.errors:  # a name with a broken definition is not used from another file
        specs.pop(name, None)
    return specs


# -- raw input ---------------------------------------------------------------------------------


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
        data = read_bytes(spec.source)
        df, sha = parse_table(data, spec.source), sha256_bytes(data)
    if spec.max_examples:
        df = df.head(spec.max_examples)
    return df.with_row_index("row"), sha


def canonical(raw: pl.DataFrame, spec: DatasetSpec) -> pl.DataFrame:
    """Map raw rows to the canonical columns (adapter, column mapping, or already canonical)."""
    if spec.adapter:
        return adapt(raw, spec.adapter, spec.source)
    mapping = {canon: spec.columns.get(canon, canon) for canon in DATASET_COLUMNS[spec.kind]}
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
    rows = canonical(raw, spec)
    try:
        clean, quarantine = clean_frame(rows, spec.kind, max_chars=spec.max_chars)
    except (ValueError, pl.exceptions.PolarsError) as exc:  # a column of the wrong type
        raise DatasetError(f"{spec.source}: {str(exc).splitlines()[0]}") from None
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
