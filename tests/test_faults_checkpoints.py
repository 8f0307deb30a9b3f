"""Fault injection, checkpoints: odd folder names, `..` in S3 keys, metadata in the identity,
truncated weights, custom code, symlinks out of the tree. Each bad checkpoint fails alone, with
one line naming it, and the others are still found (and evaluated, for the nightly)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import polars as pl
import pytest

from kbitlaw.checkpoints import discover, resolve
from kbitlaw.eval.sweep import DatasetRef, checkpoint_dict, plan, result_key
from kbitlaw.law.io import read_results_store
from kbitlaw.store import Store
from tests.conftest import kbitlaw, make_checkpoint, write_specs

pytestmark = pytest.mark.slow  # nightly flows over broken checkpoints

ODD = "step 977 ü"


def torn(root: Path) -> list[Path]:
    """Temporary files a write left behind (Store writes via `.kbitlaw-tmp-` names)."""
    return [p for p in root.rglob("*") if ".kbitlaw-tmp-" in p.name]


def checkpoints_json(uri: str) -> tuple[int, dict, str]:
    out = kbitlaw("checkpoints", uri, "--json")
    return out.returncode, (json.loads(out.stdout) if out.stdout.strip() else {}), out.stderr


@pytest.fixture(scope="module")
def odd_tree(tmp_path_factory) -> Path:
    """A normal checkpoint and one in a folder named `step 977 ü` (no sidecar: its id is its path)."""
    root = tmp_path_factory.mktemp("odd")
    make_checkpoint(root / "fam" / "step-1", seed=1, sidecar={"family": "fam", "size": "s", "step": 1})
    make_checkpoint(root / "fam" / ODD, seed=2)
    return root


def test_odd_folder_name_is_listed(odd_tree):
    rc, doc, stderr = checkpoints_json(str(odd_tree))
    assert rc == 0, stderr
    assert doc["errors"] == []
    by_id = {c["id"]: c for c in doc["checkpoints"]}
    assert set(by_id) == {"fam/s/step-1", f"fam/{ODD}"}
    assert by_id[f"fam/{ODD}"]["uri"] == str(odd_tree / "fam" / ODD)  # read by its real path
    assert by_id[f"fam/{ODD}"]["family"] == "fam" and by_id[f"fam/{ODD}"]["n_params"] > 0
    assert resolve(str(odd_tree / "fam" / ODD)).fingerprint == by_id[f"fam/{ODD}"]["fingerprint"]


def test_nightly_evaluates_a_checkpoint_with_an_odd_name(tmp_path, prefect_api):
    checkpoints = tmp_path / "checkpoints"
    meta = {"family": "tiny", "size": "h32", "step": 10, "tokens_seen": 10_000}
    normal = make_checkpoint(checkpoints / "tiny" / "h32" / "step-10", seed=1, sidecar=meta)
    odd = shutil.copytree(normal, normal.parent / ODD)  # identical weights, a later step
    (odd / "kbitlaw.json").write_text(
        json.dumps({"family": "tiny", "size": "h32", "step": 977, "tokens_seen": 977_000})
    )
    specs = write_specs(tmp_path / "specs", n=8)
    store = tmp_path / "store"
    out = kbitlaw(
        "nightly",
        "--store",
        str(store),
        "--checkpoints",
        str(checkpoints),
        "--grid",
        "fp16",
        "--dataset-specs",
        str(specs),
        "--json",
        env={**os.environ, "PREFECT_API_URL": prefect_api},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    assert doc["checkpoints"] == 2 and doc["unusable_checkpoints"] == []
    assert doc["evaluations"] == {"computed": 2, "cached": 0, "failed": 0}
    rows = read_results_store(Store(str(store)))
    by_uri = {r["checkpoint_uri"]: r for r in rows.iter_rows(named=True)}
    assert set(by_uri) == {str(normal), str(odd)}
    assert by_uri[str(odd)]["checkpoint_id"] == "tiny/h32/step-977"
    assert by_uri[str(odd)]["tokens_seen"] == 977_000  # its own metadata, not merged with step 10
    per_checkpoint = rows.group_by("checkpoint_uri").agg(pl.col("dataset").n_unique().alias("n"))
    assert per_checkpoint["n"].to_list() == [3, 3]  # every dataset, for both
    assert torn(store) == []


def test_s3_key_with_dotdot_fails_alone(odd_tree, s3_env, s3_server):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    source = odd_tree / "fam" / "step-1"
    for folder in ("fam/step-1", f"fam/{ODD}", "../evil", "fam/a/../b"):
        for f in source.iterdir():
            client.put_object(Bucket=s3_env, Key=f"ckpts/{folder}/{f.name}", Body=f.read_bytes())
    uri = f"s3://{s3_env}/ckpts"
    rc, doc, stderr = checkpoints_json(uri)
    assert rc == 0, stderr
    assert sorted(c["uri"] for c in doc["checkpoints"]) == sorted([f"{uri}/fam/step-1", f"{uri}/fam/{ODD}"])
    errors = sorted(doc["errors"])
    assert errors == [
        f"{uri}/../evil: the path part '..' could name a folder outside {uri}; rename the folder",
        f"{uri}/fam/a/../b: the path part '..' could name a folder outside {uri}; rename the folder",
    ]
    # The same in plain text: one stderr line per bad checkpoint, no traceback.
    out = kbitlaw("checkpoints", uri)
    assert out.returncode == 0
    assert out.stderr.splitlines() == [f"error: {e}" for e in errors]
    # ... and the odd-named one loads from S3 by its real key.
    [ckpt] = [c for c in discover(uri)[0] if c.uri.endswith(ODD)]
    assert resolve(ckpt.uri).fingerprint == ckpt.fingerprint


def test_fingerprint_follows_the_metadata(tmp_path):
    meta = {"family": "f", "size": "s", "step": 1, "tokens_seen": 100}
    a = make_checkpoint(tmp_path / "tree" / "a", seed=3, sidecar=meta)
    fp0 = resolve(str(a)).fingerprint
    (a / "kbitlaw.json").write_text(json.dumps({**meta, "tokens_seen": 150}))  # a corrected count
    fixed = resolve(str(a))
    assert fixed.fingerprint != fp0 and fixed.tokens_seen == 150
    (a / "kbitlaw.json").write_text(json.dumps({**meta, "tokens_seen": 150, "note": "checked"}))
    assert resolve(str(a)).fingerprint == fixed.fingerprint  # a note is not identity
    # The corrected checkpoint is new work: its results are missing though the old ones are stored.
    store = Store(str(tmp_path / "store"))
    ref = DatasetRef("d", "cloze", "datasets/clean/d/x.parquet", "x")
    store.write_bytes(result_key(fp0, "fp16", ref), b"old")
    [(_, _, todo, _)] = plan(store, [checkpoint_dict(fixed)], ["fp16"], [ref], width=1)
    assert todo == [ref]
    # Identical weights at another step: two checkpoints, not one.
    b = shutil.copytree(a, tmp_path / "tree" / "b")
    (b / "kbitlaw.json").write_text(json.dumps({**meta, "tokens_seen": 150, "step": 2}))
    found, errors = discover(str(tmp_path / "tree"))
    assert errors == [] and [c.step for c in found] == [1, 2]
    assert found[0].files == found[1].files and found[0].fingerprint != found[1].fingerprint
    assert torn(tmp_path / "store") == []


@pytest.fixture
def broken_tree(tmp_path) -> Path:
    root = tmp_path / "tree"
    outside = make_checkpoint(tmp_path / "outside", seed=4)
    for name, seed in (("good", 5), ("truncated", 6), ("custom-code", 7), ("link-out", 8), ("bad-meta", 9)):
        make_checkpoint(root / name, seed=seed)
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    config = json.loads((root / "custom-code" / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (root / "custom-code" / "config.json").write_text(json.dumps(config))
    (root / "custom-code" / "modeling_evil.py").write_text("raise SystemExit('executed checkpoint code')\n")
    (root / "link-out" / "model.safetensors").unlink()
    (root / "link-out" / "model.safetensors").symlink_to(outside / "model.safetensors")
    (root / "bad-meta" / "kbitlaw.json").write_text(json.dumps({"step": "latest"}))
    (root / "dir-link").symlink_to(outside, target_is_directory=True)  # a whole checkpoint elsewhere
    inside = make_checkpoint(root / "link-in", seed=10)  # a link within the tree is fine
    (inside / "tokenizer.json").unlink()
    (inside / "tokenizer.json").symlink_to(root / "good" / "tokenizer.json")
    return root


def test_broken_checkpoints_fail_alone(broken_tree):
    rc, doc, stderr = checkpoints_json(str(broken_tree))
    assert rc == 0, stderr
    assert sorted(c["id"] for c in doc["checkpoints"]) == ["good", "link-in"]  # dir-link not followed
    errors = sorted(doc["errors"])
    assert len(errors) == 4 and all("\n" not in e for e in errors)
    bad_meta, custom, link, truncated = errors
    assert bad_meta.startswith(f"{broken_tree}/bad-meta/kbitlaw.json: field 'step' must be a whole number")
    assert custom.startswith(f"{broken_tree}/custom-code: config.json asks for custom model code (auto_map)")
    assert link.startswith(f"{broken_tree}/link-out/model.safetensors: a symbolic link to ")
    assert f"outside {broken_tree}" in link
    assert truncated.startswith(f"{broken_tree}/truncated/model.safetensors: truncated safetensors file")
