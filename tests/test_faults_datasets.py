"""Faults in dataset specs and raw dataset files: each fails its own dataset with one line.

A bad spec file (a name that escapes the store, broken YAML, a field of the wrong type, a name
defined twice) no longer stops the other specs from loading; a CSV source with a JSON list column
is cleaned, its malformed cells quarantined; broken JSON lines name the line.
"""

from __future__ import annotations

import json
import logging

import polars as pl
import pytest

from kbitlaw.data.prepare import select_dataset_specs
from kbitlaw.data.specs import DatasetError, DatasetSpec, clean_dataset, load_dataset_specs
from kbitlaw.store import Store
from tests.conftest import write_specs


@pytest.fixture
def spec_dir(tmp_path):
    """Two good specs (logic, cloze; `text` removed) and one named ../../x."""
    directory = write_specs(tmp_path / "specs")
    (directory / "text.yaml").unlink()
    bad = {"name": "../../x", "kind": "cloze", "source": "builtin:cloze"}
    (directory / "escape.yaml").write_text(json.dumps(bad))
    return directory


def test_a_spec_named_outside_the_store_fails_alone(spec_dir, caplog):
    specs = load_dataset_specs(spec_dir)
    assert sorted(specs) == ["cloze", "logic"]
    assert list(specs.errors) == ["../../x"]
    message = specs.errors["../../x"]
    assert message.startswith(f"{spec_dir / 'escape.yaml'}: field 'name': ") and "\n" not in message
    with caplog.at_level(logging.INFO, logger="kbitlaw"):
        chosen = select_dataset_specs(None, str(spec_dir))
    assert [s.name for s in chosen] == ["cloze", "logic"]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", f"invalid dataset spec: {message}")
    ]


def test_the_bad_spec_is_that_datasets_error(spec_dir, caplog):
    invalid: list[str] = []
    chosen = select_dataset_specs(None, str(spec_dir), invalid=invalid)
    assert [s.name for s in chosen] == ["cloze", "logic"] and len(invalid) == 1
    assert "escape.yaml: field 'name'" in invalid[0]
    with caplog.at_level(logging.INFO, logger="kbitlaw"):
        assert [s.name for s in select_dataset_specs(["logic"], str(spec_dir))] == ["logic"]
    assert caplog.records == []  # asking for a good dataset says nothing about the bad one
    with pytest.raises(DatasetError) as err:  # as the nightly's per-dataset task asks for it
        select_dataset_specs(["../../x"], str(spec_dir))
    assert str(err.value) == invalid[0]
    with pytest.raises(DatasetError, match=r"unknown dataset\(s\) nope \(known: \.\./\.\./x, cloze, logic\)"):
        select_dataset_specs(["nope"], str(spec_dir))


def test_every_kind_of_broken_spec_file_fails_alone(spec_dir):
    (spec_dir / "broken.yaml").write_text("name: [unclosed\n")
    (spec_dir / "rows.yaml").write_text(
        json.dumps({"name": "rows", "kind": "cloze", "source": "builtin:cloze", "min_rows": "many"})
    )
    (spec_dir / "logic2.yaml").write_text(json.dumps({"name": "logic", "kind": "cloze", "source": "x"}))
    (spec_dir / "list.yaml").write_text("- just\n- a list\n")
    specs = load_dataset_specs(spec_dir)
    assert sorted(specs) == ["cloze"]
    errors = specs.errors
    assert sorted(errors) == ["../../x", "broken", "list", "logic", "rows"]
    assert "broken.yaml: not valid YAML" in errors["broken"]
    assert "rows.yaml: field 'min_rows': 'many' is not an integer" in errors["rows"]
    assert "logic2.yaml: dataset name 'logic' already defined in" in errors["logic"]
    assert "list.yaml: a dataset spec must be a mapping" in errors["list"]
    assert all("\n" not in e for e in errors.values())


def _csv_cell(choices: list[str]) -> str:
    return '"' + json.dumps(choices).replace('"', '""') + '"'


def test_a_csv_source_with_a_json_list_column_is_cleaned(tmp_path):
    raw = tmp_path / "mc.csv"
    cells = [_csv_cell(["yes", "no"]), '"[""yes"", ""no"""', _csv_cell(["up", "down"]), "not json"]
    raw.write_text(
        "id,context,choices,gold\n"
        + "\n".join(f"{i},question {i}?,{cell},{i % 2}" for i, cell in enumerate(cells))
        + "\n"
    )
    store = Store(str(tmp_path / "store"))
    cleaned = clean_dataset(store, DatasetSpec(name="mine", kind="multiple_choice", source=str(raw)))
    clean = store.read_parquet(cleaned.key)
    assert clean["id"].to_list() == ["0", "2"]
    assert clean["choices"].to_list() == [["yes", "no"], ["up", "down"]]
    assert cleaned.summary["reasons"] == {"choices not a JSON list": 2}
    quarantine = store.read_parquet(cleaned.quarantine_key)
    assert quarantine["choices"].to_list() == ['["yes", "no"', "not json"]  # as they arrived


@pytest.mark.parametrize(
    "text, message",
    [
        ("id,text\n1,the cat sat\n", "not JSON lines: line 1 is not JSON (Expecting value at column 1"),
        ('{"id": "1", "text": "a b"}\n\n{"id": "2", "text": "a b\n', "line 3: not valid JSON (Unterminated"),
        ('{"id": "1", "text": "a b"}\n[1, 2]\n', "line 2: a JSON list, not an object"),
    ],
)
def test_broken_json_lines_name_the_line(tmp_path, text, message):
    raw = tmp_path / "data.jsonl"
    raw.write_text(text)
    with pytest.raises(DatasetError) as err:
        clean_dataset(Store(str(tmp_path / "store")), DatasetSpec(name="x", kind="cloze", source=str(raw)))
    assert str(err.value).startswith(f"{raw}: {message}") and "\n" not in str(err.value)


def test_a_column_of_the_wrong_type_is_one_line(tmp_path):
    raw = tmp_path / "nested.jsonl"
    pl.DataFrame({"id": ["1"], "text": [[1, 2]]}).write_ndjson(raw)
    with pytest.raises(DatasetError, match=r"nested\.jsonl: column 'text' holds List\(Int64\), not text$"):
        clean_dataset(Store(str(tmp_path / "store")), DatasetSpec(name="x", kind="cloze", source=str(raw)))
