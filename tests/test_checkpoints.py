"""Checkpoint discovery, fingerprints, parameter counts and safe loading, local and on S3."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from kbitlaw.checkpoint_loading import load_model, load_tokenizer
from kbitlaw.checkpoints import CheckpointError, discover, resolve
from kbitlaw.model_structure import count_params, transformer_linears
from kbitlaw.store import Store
from tests.conftest import make_checkpoint


def _upload_tree(local: Path, store_uri: str) -> None:
    store = Store(store_uri)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            store.put_file(path, path.relative_to(local).as_posix())


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Two good checkpoints of one family and three broken ones."""
    root = tmp_path_factory.mktemp("tree")
    for step, seed in [(100, 1), (200, 2)]:
        make_checkpoint(
            root / "fam" / "h32" / f"step-{step}",
            seed=seed,
            sidecar={"family": "fam", "size": "h32", "step": step, "tokens_seen": step * 64},
        )
    no_config = make_checkpoint(root / "broken" / "no-config", seed=3)
    (no_config / "config.json").unlink()
    truncated = make_checkpoint(root / "broken" / "truncated", seed=4)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    pickled = make_checkpoint(root / "broken" / "pickle-only", seed=5)
    model = load_model(str(pickled))
    (pickled / "model.safetensors").unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    return root


@pytest.fixture(params=["local", "s3"])
def tree_uri(request, tree):
    if request.param == "local":
        return str(tree)
    bucket = request.getfixturevalue("s3_env")
    uri = f"s3://{bucket}/checkpoints"
    _upload_tree(tree, uri)
    return uri


def test_discovery_finds_good_and_reports_broken(tree_uri):
    found, errors = discover(tree_uri)
    assert [c.id for c in found] == ["fam/h32/step-100", "fam/h32/step-200"]
    assert [(c.family, c.step, c.tokens_seen) for c in found] == [("fam", 100, 6400), ("fam", 200, 12800)]
    messages = sorted(str(e) for e in errors)
    assert len(messages) == 3 and all("\n" not in m for m in messages)
    assert "broken/no-config: no config.json" in messages[0]
    assert "broken/pickle-only: only pickle weights (pytorch_model.bin)" in messages[1]
    assert "broken/truncated" in messages[2] and "truncated" in messages[2].split(":", 2)[-1]


def test_fingerprint_is_content_addressed_and_same_on_both_backends(tree, tree_uri):
    local = {c.id: c.fingerprint for c in discover(str(tree))[0]}
    here = {c.id: c.fingerprint for c in discover(tree_uri)[0]}
    assert len(set(local.values())) == 2  # different weights, different fingerprints
    if tree_uri.startswith("s3://"):
        # S3 uses ETags (md5 of single-part uploads), local files their sha256: stable, not equal.
        assert set(here.values()).isdisjoint(local.values())
        assert here == {c.id: c.fingerprint for c in discover(tree_uri)[0]}
    else:
        assert here == local


def test_fingerprint_changes_exactly_when_config_or_weights_change(tmp_path):
    ckpt = make_checkpoint(tmp_path / "c", seed=7, sidecar={"family": "f", "size": "s", "step": 1})
    fp0 = resolve(str(ckpt)).fingerprint
    os.utime(ckpt / "model.safetensors", (1, 1))  # touching is not changing
    (ckpt / "kbitlaw.json").write_text(json.dumps({"family": "f", "size": "s", "step": 1, "note": "x"}))
    assert resolve(str(ckpt)).fingerprint == fp0
    config = json.loads((ckpt / "config.json").read_text())
    config["layer_norm_eps"] = 1e-6
    (ckpt / "config.json").write_text(json.dumps(config))
    fp1 = resolve(str(ckpt)).fingerprint
    assert fp1 != fp0
    copy = shutil.copytree(ckpt, tmp_path / "copy")
    assert resolve(str(copy)).fingerprint == fp1  # content, not location
    make_checkpoint(tmp_path / "c", seed=8)  # new weights
    assert resolve(str(ckpt)).fingerprint not in (fp0, fp1)


@pytest.mark.parametrize("arch", ["neox", "gpt2"])
def test_param_counts(tmp_path, arch):
    path = make_checkpoint(tmp_path / arch, arch=arch, hidden=32, layers=2)
    model = load_model(str(path))
    counts = count_params(model)
    hidden, vocab = 32, model.config.vocab_size
    # Each block: attention qkv (3h·h) + out (h·h) + MLP (4h·h, twice) = 12h² linear weights.
    assert counts.quantizable == 2 * 12 * hidden * hidden
    assert len(transformer_linears(model)) == 8  # 4 linear layers per block
    if arch == "gpt2":  # tied input/output embeddings count once; wpe is an nn.Embedding too
        assert counts.embedding_and_head == vocab * hidden + 64 * hidden
    else:
        assert counts.embedding_and_head == 2 * vocab * hidden
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.other == counts.total - counts.quantizable - counts.embedding_and_head > 0
    assert resolve(str(path)).n_params == counts.total  # from the safetensors headers alone


def test_load_from_s3_copies_once_into_the_cache(tree, s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("KBITLAW_CACHE", str(tmp_path / "cache"))
    uri = f"s3://{s3_env}/ckpts"
    _upload_tree(tree / "fam" / "h32" / "step-100", uri)
    ckpt = resolve(uri)
    model = load_model(ckpt)
    local = load_model(str(tree / "fam" / "h32" / "step-100"))
    ids = torch.tensor([[2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, local(ids).logits)
    cached = tmp_path / "cache" / "checkpoints" / ckpt.fingerprint
    assert (cached / ".complete").exists()
    stamp = (cached / "model.safetensors").stat().st_mtime_ns
    load_model(ckpt)
    assert (cached / "model.safetensors").stat().st_mtime_ns == stamp  # not downloaded again
    assert load_tokenizer(ckpt)("the cat sat")["input_ids"] == [2, 4, 6]


def test_pickle_is_refused_unless_allowed(tree):
    path = str(tree / "broken" / "pickle-only")
    with pytest.raises(CheckpointError, match="only pickle weights"):
        load_model(path)
    model = load_model(path, allow_pickle=True)
    assert count_params(model).quantizable > 0


def test_remote_code_is_refused(tmp_path):
    path = make_checkpoint(tmp_path / "custom", seed=9)
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (path / "config.json").write_text(json.dumps(config))
    (path / "modeling_evil.py").write_text("raise SystemExit('executed checkpoint code')\n")
    with pytest.raises(CheckpointError, match="never runs code from a checkpoint"):
        load_model(str(path))


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    path = make_checkpoint(tmp_path / "notok", seed=10, tokenizer=False)
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        load_tokenizer(str(path))


def test_resolve_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        resolve(str(tmp_path / "nothing"))


def test_hf_uri_offline_is_a_clear_error():
    found, errors = discover("hf://org/name@main,hf://bad uri")
    assert found == [] and len(errors) == 2
    assert str(errors[0]).startswith("hf://org/name@main: cannot read from the Hugging Face Hub")
    assert "not a valid hf://" in str(errors[1])
