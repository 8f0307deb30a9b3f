"""GPTQ (quant/gptq.py) and its calibration data (eval/calibration.py): the algorithm against
round-to-nearest on known cases, on a trained model's real activations and loss, determinism and the
pristine-weight bookkeeping, result keys, the command line and the nightly flow."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from kbitlaw.data import world
from kbitlaw.eval import sweep
from kbitlaw.eval.calibration import (
    CalibrationRef,
    calibration_ref,
    calibration_texts,
    calibration_tokens,
    parse_calibration,
)
from kbitlaw.eval.run import evaluate_specs, load_checkpoint
from kbitlaw.model_structure import transformer_linears
from kbitlaw.quant import hessians as hessians_module
from kbitlaw.quant.fake import fake_quantize, quantize_model, restore
from kbitlaw.quant.gptq import gptq_quantize_model, gptq_quantize_weight
from kbitlaw.quant.hessians import block_hessians, collect_hessians, gram
from kbitlaw.store import Store
from tests.conftest import corpus_sentences, kbitlaw, make_checkpoint, make_family, write_specs

VOLATILE = ("seconds", "created_at")


def correlated_hessian(n_in: int, seed: int = 0, n: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """(H = 2 XᵀX / n, held-out inputs) for inputs with correlated features, as real activations."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(n_in, n_in, generator=gen) / n_in**0.5 + torch.eye(n_in)
    x = torch.randn(n, n_in, generator=gen) @ mix
    held_out = torch.randn(n, n_in, generator=gen) @ mix
    return 2 * x.T.double() @ x.double() / n, held_out


# -- one weight ------------------------------------------------------------------------------------

# nn.Linear [out, in] with blocks inside rows, blocks across row ends (in = 80, B = 64), Conv1D [in, out]
SHAPES = [((96, 128), 1), ((48, 80), 1), ((128, 96), 0)]


@pytest.mark.parametrize("spec", ["int4-b64", "nf4-b64", "int3", "mxfp4", "nvfp4"])
@pytest.mark.parametrize("shape, in_dim", SHAPES)
@pytest.mark.parametrize("act_order", [False, True])
def test_identity_hessian_is_round_to_nearest_exactly(spec, shape, in_dim, act_order):
    """With H = I no error moves to other columns: GPTQ is fake_quantize, bit for bit (same blocks,
    scales and ties), per-tensor and block-scaled specs included."""
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    hessian = torch.eye(shape[in_dim])
    got = gptq_quantize_weight(weight, hessian, spec, in_dim=in_dim, act_order=act_order)
    assert torch.equal(got, fake_quantize(weight, spec, in_dim=in_dim))


@pytest.mark.parametrize("spec", ["int3-b64", "int4-b16", "int3"])
@pytest.mark.parametrize("shape, in_dim", SHAPES)
def test_lazy_batches_equal_one_column_at_a_time(spec, shape, in_dim):
    """Lazy batch updates (and a block's scale fixed from current weights mid-batch) change nothing:
    block=128 gives the weights that updating every later column after each column (block=1) gives."""
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    hessian, _ = correlated_hessian(shape[in_dim])
    lazy = gptq_quantize_weight(weight, hessian, spec, in_dim=in_dim, block=128)
    eager = gptq_quantize_weight(weight, hessian, spec, in_dim=in_dim, block=1)
    assert (lazy == eager).float().mean() > 0.995  # float reassociation may flip a rare tie


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_lowers_the_output_error_on_correlated_inputs(act_order):
    """Measured ||X(W - Q)|| GPTQ / RTN on held-out inputs: 0.80, 0.80, 0.77 (act-order 0.76) for
    int3-b64, int4-b64, int3 (these inputs are only mildly correlated)."""
    weight = torch.randn(64, 128, generator=torch.Generator().manual_seed(5))
    hessian, x = correlated_hessian(128)
    for spec in ("int3-b64", "int4-b64", "int3"):
        rtn = fake_quantize(weight, spec)
        gptq = gptq_quantize_weight(weight, hessian, spec, act_order=act_order)
        assert (x @ (weight - gptq).T).norm() < 0.9 * (x @ (weight - rtn).T).norm(), spec


@pytest.mark.parametrize(
    "spec", ["int4-b64", "nf4-b64", "int3", "mxfp4", "nvfp4", "quantile4-b64", "int4-b16"]
)
@pytest.mark.parametrize("act_order", [False, True])
def test_the_compiled_column_loop_gives_the_torch_loops_bits(spec, act_order, monkeypatch):
    """cpu_kernels.gptq_batch against the reference's column loop in torch ops, bit for bit: the same
    float32 operations in the same order (Conv1D layouts, whose blocks start inside a lazy batch,
    take the torch loop on both paths)."""
    for shape, in_dim in [*SHAPES, ((160, 384), 1)]:
        weight = torch.randn(shape, generator=torch.Generator().manual_seed(8))
        hessian, _ = correlated_hessian(shape[in_dim])
        got = {}
        for kernels in ("torch", "numba"):
            monkeypatch.setenv("KBITLAW_KERNELS", kernels)
            got[kernels] = gptq_quantize_weight(weight, hessian, spec, in_dim=in_dim, act_order=act_order)
        assert torch.equal(got["numba"], got["torch"]), (spec, shape, in_dim)


@pytest.mark.parametrize("d", [64, 512, 700, 1536])
def test_the_gram_matrix_from_its_upper_blocks_is_xtx(d):
    x = torch.randn(300, d, generator=torch.Generator().manual_seed(d))
    got = gram(x)
    assert got.dtype == torch.float64 and torch.equal(got, got.T)
    torch.testing.assert_close(got, x.double().T @ x.double(), rtol=1e-5, atol=1e-4)


def test_dead_inputs_are_zeroed_as_the_reference_does():
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(6))
    hessian, _ = correlated_hessian(64)
    hessian[5, :] = 0
    hessian[:, 5] = 0
    got = gptq_quantize_weight(weight, hessian, "int4-b16")
    assert torch.all(got[:, 5] == 0) and torch.isfinite(got).all()


def test_bad_inputs_fail_clearly():
    weight = torch.randn(8, 16)
    with pytest.raises(ValueError, match="Hessian of shape"):
        gptq_quantize_weight(weight, torch.eye(8), "int4")
    with pytest.raises(ValueError, match="without -o"):
        gptq_quantize_weight(weight, torch.eye(16), "int4-o2")


# -- a trained model -------------------------------------------------------------------------------


def toy_tokens(tokenizer, seed: int, n_seq: int, seq_len: int = 64) -> torch.Tensor:
    """Token ids of the trained checkpoint's own toy grammar (fresh sentences for each seed)."""
    ids = tokenizer(" ".join(corpus_sentences(3000, seed)))["input_ids"]
    return torch.tensor(ids[: n_seq * seq_len]).view(n_seq, seq_len)


@pytest.fixture(scope="module")
def trained(trained_checkpoint):
    return load_checkpoint(str(trained_checkpoint), device="cpu")


def test_block_hessians_follow_the_model_forward(trained, tmp_path):
    """Replaying the recorded block calls gives the Hessians a plain forward pass gives (GPT-NeoX,
    and GPT-2 with its Conv1D layers), when nothing is quantized in between."""
    gpt2 = load_checkpoint(str(make_checkpoint(tmp_path / "gpt2", arch="gpt2", hidden=32)), device="cpu")
    for loaded in (trained, gpt2):
        model = loaded.model
        ids = torch.randint(0, model.config.vocab_size, (6, 32), generator=torch.Generator().manual_seed(0))
        plain = collect_hessians(model, ids, batch_size=4)
        replayed = {name: h for _, hs in block_hessians(model, ids, batch_size=4) for name, h in hs.items()}
        assert set(replayed) == set(plain) == {name for name, _ in transformer_linears(model)}
        for name, h in plain.items():
            torch.testing.assert_close(replayed[name], h, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spec", ["int3-b64", "int4-b64"])
def test_gptq_beats_round_to_nearest_on_held_out_activations(trained, spec):
    """Per layer, ||X W - X Q|| on inputs GPTQ did not calibrate on. Measured on this checkpoint
    (GPTQ / round-to-nearest): 0.25-0.51 at int3-b64, 0.23-0.49 at int4-b64, over all 8 linears."""
    model = trained.model
    ids = toy_tokens(trained.tokenizer, seed=1, n_seq=128)
    hessians = collect_hessians(model, ids[:64])
    inputs: dict[str, list[torch.Tensor]] = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, n=n: inputs.setdefault(n, []).append(i[0].flatten(0, 1)))
        for n, m in transformer_linears(model)
    ]
    with torch.no_grad():
        model(input_ids=ids[64:])
    for h in hooks:
        h.remove()
    for name, module in transformer_linears(model):
        x, w = torch.cat(inputs[name]), module.weight.detach()
        rtn = (x @ (w - fake_quantize(w, spec)).T).norm()
        gptq = (x @ (w - gptq_quantize_weight(w, hessians[name], spec)).T).norm()
        assert gptq < 0.8 * rtn, (name, float(gptq / rtn))


def mean_nll(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def test_gptq_at_3_bits_does_far_less_damage_than_round_to_nearest(trained):
    """Loss damage over the unquantized model on held-out text. Measured on this checkpoint (mean
    NLL 0.401 nats; round-to-nearest / GPTQ sequential / parallel): int3-b64 +0.0031 / -0.0001 /
    +0.0009; int3 (per tensor) +0.061 / +0.0075 / +0.0024; int4-b64 all within +-0.001 (noise).
    Asserted: GPTQ's damage under half of RTN's at 3 bits, with either calibration mode."""
    model = trained.model
    calibration = toy_tokens(trained.tokenizer, seed=1, n_seq=128)
    held_out = toy_tokens(trained.tokenizer, seed=2, n_seq=64)
    base = mean_nll(model, held_out)
    try:
        for spec in ("int3-b64", "int3"):
            quantize_model(model, spec)
            rtn = mean_nll(model, held_out) - base
            for mode in ("sequential", "parallel"):
                quantize_model(model, f"{spec}-gptq", calibration=calibration, calibration_mode=mode)
                gptq = mean_nll(model, held_out) - base
                assert rtn > 1e-3 and gptq < 0.5 * rtn, (spec, mode, rtn, gptq)
    finally:
        restore(model)
    assert mean_nll(model, held_out) == base


def test_deterministic_restorable_and_later_specs_start_from_the_originals(trained_checkpoint):
    a = load_checkpoint(str(trained_checkpoint), device="cpu").model
    b = load_checkpoint(str(trained_checkpoint), device="cpu").model
    original = {n: p.detach().clone() for n, p in a.named_parameters()}
    calibration = torch.randint(0, a.config.vocab_size, (16, 64), generator=torch.Generator().manual_seed(0))

    report = quantize_model(a, "nf4-b64-gptq", calibration=calibration)
    first = {n: p.detach().clone() for n, p in a.named_parameters()}
    quantize_model(a, "int3-b64")  # a spec in between: GPTQ must start from the originals again
    again = quantize_model(a, "nf4-b64-gptq", calibration=calibration)
    assert all(torch.equal(first[n], p) for n, p in a.named_parameters())
    assert (
        report == again
        and report.bits_per_param == 4.25
        and set(report.layer_mse) == {n for n, _ in transformer_linears(a)}
    )
    changed = [n for n, p in a.named_parameters() if not torch.equal(p, original[n])]
    assert sorted(changed) == sorted(f"{n}.weight" for n, _ in transformer_linears(a))

    quantize_model(a, "int3-b64")  # round-to-nearest after GPTQ = on a fresh model
    quantize_model(b, "int3-b64")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    restore(a)
    assert all(torch.equal(original[n], p) for n, p in a.named_parameters())


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_a_second_gptq_spec_reuses_the_calibration_pass(trained_checkpoint, mode, monkeypatch):
    """What does not depend on the spec is computed once per model and calibration tokens (the first
    block's inputs, or every Hessian), and reusing it changes no weight: a second spec on a model
    that already ran one equals that spec on a fresh model."""
    import kbitlaw.quant.gptq as gptq_module

    passes = []

    def counted(real):
        def run(*args, **kwargs):
            passes.append(real.__name__)
            return real(*args, **kwargs)

        return run

    monkeypatch.setattr(hessians_module, "_block_calls", counted(hessians_module._block_calls))
    monkeypatch.setattr(gptq_module, "collect_hessians", counted(hessians_module.collect_hessians))
    used = load_checkpoint(str(trained_checkpoint), device="cpu").model
    fresh = load_checkpoint(str(trained_checkpoint), device="cpu").model
    calibration = torch.randint(
        0, used.config.vocab_size, (8, 32), generator=torch.Generator().manual_seed(1)
    )
    quantize_model(used, "int4-b64-gptq", calibration=calibration, calibration_mode=mode)
    quantize_model(used, "int3-b64-gptq", calibration=calibration.clone(), calibration_mode=mode)
    assert len(passes) == 1
    quantize_model(fresh, "int3-b64-gptq", calibration=calibration, calibration_mode=mode)
    assert all(torch.equal(p, q) for p, q in zip(used.parameters(), fresh.parameters(), strict=True))
    quantize_model(used, "int3-b64-gptq", calibration=calibration[:4], calibration_mode=mode)
    assert len(passes) == 3  # other tokens: a new pass (the fresh model's was the second)


def test_gptq_without_calibration_data_names_the_spec(trained):
    with pytest.raises(ValueError, match="int3-b64-gptq: GPTQ needs calibration data"):
        quantize_model(trained.model, "int3-b64-gptq")
    with pytest.raises(ValueError, match="int3-b64-gptq: GPTQ needs calibration data"):
        evaluate_specs(
            trained,
            pl.DataFrame({"id": ["a"], "text": ["x"]}),
            "perplexity",
            "int3-b64-gptq",
            calibration=None,
        )
    with pytest.raises(ValueError, match="no -o"):
        gptq_quantize_model(trained.model, "int4-b64-emb", torch.zeros(1, 4, dtype=torch.long))


def test_two_runs_give_identical_result_rows(trained):
    df = pl.DataFrame({"id": [str(i) for i in range(12)], "text": corpus_sentences(12, 9)})
    runs = [
        evaluate_specs(trained, df, "perplexity", "fp16,int3-b64,int3-b64-gptq", calibration="text:16")
        for _ in range(2)
    ]
    strip = [[{k: v for k, v in r.items() if k not in VOLATILE} for r in rows] for rows in runs]
    assert strip[0] == strip[1]
    by_quant = {r["quant"]: r["calibration"] for r in runs[0]}
    assert by_quant == {"fp16": None, "int3-b64": None, "int3-b64-gptq": "text:16"}


# -- calibration data ------------------------------------------------------------------------------


def test_parse_calibration():
    assert parse_calibration("text") == ("text", 128, "sequential")
    assert parse_calibration("wiki:32") == ("wiki", 32, "sequential")
    assert parse_calibration("wiki:32:parallel") == ("wiki", 32, "parallel")
    assert parse_calibration("wiki:parallel") == ("wiki", 128, "parallel")
    for bad in ("text:0", "text:x", ":4", "text:4:fast", "text:4:parallel:2"):
        with pytest.raises(ValueError, match="calibration"):
            parse_calibration(bad)


def test_parallel_calibration_has_its_own_result_key_and_sequential_keeps_its_old_one():
    sequential, parallel = calibration_ref("text:64"), calibration_ref("text:64:parallel")
    assert str(sequential) == "text:64" and str(parallel) == "text:64:parallel"
    assert "mode" not in sequential.identity()  # the keys stored before there were modes still match
    assert parallel.identity() == {**sequential.identity(), "mode": "parallel"}
    assert CalibrationRef.from_dict(parallel.to_dict()) == parallel


def test_builtin_calibration_is_the_training_side_never_the_evaluation_rows(trained):
    ref = calibration_ref("text:64")
    spec = ref.spec
    evaluation = {
        r["text"] for r in world.suite("text", 200, **{k: spec["params"][k] for k in ("seed", "difficulty")})
    }
    stream = calibration_texts(ref)
    drawn = [next(stream) for _ in range(2000)]
    assert not evaluation & set(drawn) and all(
        not world.is_eval_instance(t.removesuffix(" .")) for t in drawn
    )
    tokens = calibration_tokens(ref, trained.tokenizer, window=64)
    assert tokens.shape == (64, 64) and tokens.dtype == torch.int64
    assert torch.equal(
        tokens, calibration_tokens(CalibrationRef.from_dict(ref.to_dict()), trained.tokenizer, 64)
    )
    assert calibration_tokens(calibration_ref("text:2"), trained.tokenizer, window=1024).shape == (2, 256)


def test_file_calibration_data_too_small_says_how_much_there_is(trained, tmp_path):
    data = tmp_path / "small.jsonl"
    data.write_text(
        "".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(corpus_sentences(20, 3)))
    )
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "small.yaml").write_text(
        json.dumps({"name": "small", "kind": "perplexity", "source": str(data)})
    )
    ref = calibration_ref("small:2", str(specs))
    assert calibration_tokens(ref, trained.tokenizer, window=32).shape == (2, 32)
    with pytest.raises(
        ValueError, match=r"calibration small:500: the dataset has \d+ tokens.*ask for at most small:"
    ):
        calibration_tokens(calibration_ref("small:500", str(specs)), trained.tokenizer, window=32)
    with pytest.raises(ValueError, match="unknown dataset"):
        calibration_ref("nope", str(specs))


# -- result keys ------------------------------------------------------------------------------------


def test_calibration_is_part_of_the_result_key_of_gptq_specs_only(trained_checkpoint, tmp_path):
    """A new calibration set re-evaluates GPTQ specs only; round-to-nearest results stay cached."""
    from kbitlaw.checkpoints import resolve

    store = Store(str(tmp_path / "store"))
    df = pl.DataFrame({"id": [str(i) for i in range(6)], "text": corpus_sentences(6, 11)})
    store.write_parquet("datasets/clean/toy/abc.parquet", df)
    ds = sweep.DatasetRef(name="toy", kind="perplexity", key="datasets/clean/toy/abc.parquet", sha="abc")
    ckpt = resolve(str(trained_checkpoint))
    a, b = calibration_ref("text:8"), calibration_ref("text:4")
    assert sweep.result_key(ckpt.fingerprint, "int3-b64", ds, a) == sweep.result_key(
        ckpt.fingerprint, "int3-b64", ds
    )
    assert sweep.result_key(ckpt.fingerprint, "int3-b64-gptq", ds, a) != sweep.result_key(
        ckpt.fingerprint, "int3-b64-gptq", ds, b
    )
    with pytest.raises(ValueError, match="int3-b64-gptq: GPTQ needs calibration data"):
        sweep.result_key(ckpt.fingerprint, "int3-b64-gptq", ds)

    specs = ["int3-b64", "int3-b64-gptq"]
    for spec in specs:
        out = sweep.evaluate_checkpoint_spec(store, ckpt, spec, [ds], device="cpu", calibration=a)
        assert out["computed"] == ["toy"]
    row = store.read_parquet(sweep.result_key(ckpt.fingerprint, "int3-b64-gptq", ds, a)).row(0, named=True)
    assert row["calibration"] == "text:8"
    assert (
        store.read_parquet(sweep.result_key(ckpt.fingerprint, "int3-b64", ds, a))["calibration"]
        .is_null()
        .all()
    )
    todo = {
        spec: todo for _, spec, todo, _ in sweep.plan(store, [sweep.checkpoint_dict(ckpt)], specs, [ds], 1, b)
    }
    assert todo == {"int3-b64": [], "int3-b64-gptq": [ds]}
    assert sweep.evaluate_checkpoint_spec(store, ckpt, "int3-b64", [ds], calibration=b)["cached"] == ["toy"]


def test_results_without_the_calibration_column_still_read(tmp_path):
    from kbitlaw.law.table import normalise, results_sha

    old = pl.DataFrame(
        {
            "checkpoint_id": ["a"],
            "family": ["f"],
            "n_params": [10],
            "quant": ["int4"],
            "bits": [4],
            "total_bits": [40.0],
            "dataset": ["d"],
            "kind": ["perplexity"],
            "metric": ["loss"],
            "value": [1.0],
        }
    )
    normalised = normalise(old)
    assert normalised["calibration"].dtype == pl.String and normalised["calibration"].is_null().all()
    assert results_sha(normalised) == results_sha(
        normalise(old.with_columns(calibration=pl.lit(None, pl.String)))
    )
    assert results_sha(normalised) != results_sha(normalise(old.with_columns(calibration=pl.lit("text:128"))))


# -- the command line and the nightly ----------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_command_with_deployed_formats_and_gptq(trained_checkpoint, tmp_path):
    data = tmp_path / "prose.jsonl"
    data.write_text(
        "".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(corpus_sentences(16, 5)))
    )
    quant = "fp16,mxfp4,nvfp4,int3-b64,int3-b64-gptq"
    args = [
        "evaluate",
        str(trained_checkpoint),
        "--data",
        str(data),
        "--kind",
        "perplexity",
        "--quant",
        quant,
    ]
    out = kbitlaw(*args, "--calibration", "text:32")
    assert out.returncode == 0, out.stderr
    lines = {line.split("│")[1].strip(): line for line in out.stdout.splitlines() if line.count("│") > 3}
    assert "4.250" in lines["mxfp4"] and "4.50" in lines["nvfp4"]  # nvfp4: 4.5 + its fp32 tensor scales
    assert "text:32" in lines["int3-b64-gptq"] and "text:32" not in lines["int3-b64"]

    rows = json.loads(kbitlaw(*args, "--json").stdout)["results"]
    loss = {r["quant"]: r for r in rows if r["metric"] == "loss"}
    assert loss["mxfp4"]["bits_per_param"] == 4.25
    n = loss["nvfp4"]["n_params_quantized"]
    assert loss["nvfp4"]["bits_per_param"] == pytest.approx(4.5 + 32 * 8 / n)  # 8 linears, one fp32 each
    assert loss["int3-b64-gptq"]["calibration"] == "text:128" and loss["int3-b64"]["calibration"] is None
    assert loss["int3-b64-gptq"]["value"] < loss["int3-b64"]["value"]


@pytest.mark.slow
def test_nightly_calibration_change_reevaluates_only_gptq(tmp_path, prefect_api):
    from kbitlaw.flows.nightly import nightly, run_summary

    store = tmp_path / "store"
    make_family(store / "checkpoints", sizes=(("h32", 32, 1),))
    specs = write_specs(tmp_path / "specs")

    def run(calibration: str) -> dict:
        state = nightly(
            store=str(store),
            grid="fp16,int4-b64-gptq",
            dataset_specs=str(specs),
            calibration=calibration,
            return_state=True,
        )
        summary = run_summary(state)
        assert state.is_completed(), summary
        return summary

    first = run("text:8")
    assert first["evaluations"] == {"computed": 4, "cached": 0, "failed": 0}  # 2 checkpoints x 2 specs
    second = run("text:4")
    assert second["evaluations"] == {"computed": 2, "cached": 2, "failed": 0}  # GPTQ only
    assert second["fit_scope"] == {"checkpoints": 2, "results": 2 * 2 * 3}  # the old calibration left out
    rows = pl.concat([Store(str(store)).read_parquet(k) for k in Store(str(store)).list("results")])
    gptq = rows.filter(pl.col("quant") == "int4-b64-gptq")
    assert sorted(gptq["calibration"].unique().to_list()) == ["text:4", "text:8"]


@pytest.mark.slow
def test_unusable_calibration_is_one_error_line(trained_checkpoint, tmp_path):
    data = tmp_path / "prose.jsonl"
    data.write_text(json.dumps({"id": "0", "text": "the cat sat on the mat ."}) + "\n")
    base = ["evaluate", str(trained_checkpoint), "--data", str(data), "--kind", "perplexity"]
    for calibration, expected in (("nope:4", "unknown dataset(s) nope"), ("text:x", "N must be a positive")):
        out = kbitlaw(*base, "--quant", "int3-b64-gptq", "--calibration", calibration, "--json")
        errors = [line for line in out.stderr.splitlines() if line.startswith("kbitlaw: error:")]
        assert out.returncode == 1 and out.stdout == "" and len(errors) == 1 and expected in errors[0], (
            out.stderr
        )
    # round-to-nearest specs never look at it
    assert kbitlaw(*base, "--quant", "int3-b64", "--calibration", "nope", "--json").returncode == 0
