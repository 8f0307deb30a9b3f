"""Where models run: --device auto|cpu|cuda|cuda:N resolved and checked once (one error line for a
device this machine lacks), threaded to the evaluations, recorded in their rows; the pristine
weights of a GPU model kept on the CPU; bench/gpu.py's CPU dry run. No GPU needed: CUDA's
presence is faked where a test needs it."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from kbitlaw.checkpoint_loading import parse_device, pristine_device, resolve_device
from kbitlaw.checkpoints import resolve
from kbitlaw.data.specs import BUILTIN_SPECS, frame_sha, load_dataset_specs
from kbitlaw.eval import run, sweep
from kbitlaw.store import Store

ROOT = Path(__file__).resolve().parents[1]
ROWS = [{"id": str(i), "text": "the cat sat on the mat and the dog was big"} for i in range(4)]


@pytest.fixture
def no_gpu(monkeypatch):
    """This machine as one without CUDA, whatever it has; $KBITLAW_DEVICE unset."""
    monkeypatch.delenv("KBITLAW_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def one_gpu(monkeypatch):
    """This machine as one with a single GPU (nothing is ever put on it in these tests)."""
    monkeypatch.delenv("KBITLAW_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


# -- resolution ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [None, "", "auto", " AUTO "])
def test_auto_is_cpu_without_cuda_and_cuda_with_it(name, no_gpu, monkeypatch):
    assert resolve_device(name) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(name) == "cuda"


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_cuda_is_one_clear_line(name, no_gpu):
    with pytest.raises(ValueError) as info:
        resolve_device(name, label="--device")
    assert str(info.value) == f"--device {name}: CUDA is not available on this machine"


def test_a_gpu_this_machine_lacks_is_named(one_gpu):
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("cuda") == "cuda"
    assert resolve_device("CUDA:00") == "cuda:0"  # normal form
    with pytest.raises(ValueError, match=r"^device cuda:1: no such GPU \(this machine has cuda:0\)$"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("name", ["tpu", "gpu", "cuda:", "cuda:x", "cuda:-1", "cpu:0", "mps0", "cuda 1"])
def test_what_is_no_device_is_rejected_by_its_name(name):
    with pytest.raises(ValueError, match=r"not a device \(use auto, cpu, cuda or cuda:N\)$"):
        parse_device(name)
    with pytest.raises(ValueError, match=rf"^device {name}: not a device"):
        resolve_device(name)


def test_kbitlaw_device_is_honoured_by_auto_only(one_gpu, monkeypatch):
    monkeypatch.setenv("KBITLAW_DEVICE", "cpu")
    assert resolve_device("auto") == resolve_device(None) == "cpu"
    assert resolve_device("cuda") == "cuda"  # an explicit device wins over the environment
    monkeypatch.setenv("KBITLAW_DEVICE", "cuda:3")
    with pytest.raises(ValueError, match=r"^\$KBITLAW_DEVICE=cuda:3: no such GPU"):
        resolve_device("auto")
    monkeypatch.setenv("KBITLAW_DEVICE", "tpu")
    with pytest.raises(ValueError, match=r"^\$KBITLAW_DEVICE tpu: not a device"):
        resolve_device(None)
    monkeypatch.setenv("KBITLAW_DEVICE", "auto")
    assert resolve_device(None) == "cuda"


def test_pristine_weights_of_a_gpu_model_stay_on_the_cpu():
    on = lambda device: types.SimpleNamespace(  # noqa: E731  (a model as pristine_device sees it)
        parameters=lambda: iter([types.SimpleNamespace(device=torch.device(device))])
    )
    assert pristine_device(on("cuda:0")) == "cpu"
    assert pristine_device(on("cpu")) is None  # beside the weights, as before
    assert pristine_device(torch.nn.Linear(2, 2)) is None


# -- the command line (in process: Typer's runner) --------------------------------------------------


def cli(*args: str):
    from kbitlaw.flows.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_evaluate_device_cuda_without_cuda(device, no_gpu, tmp_path, tiny_checkpoint):
    data = tmp_path / "rows.jsonl"
    pl.DataFrame(ROWS).write_ndjson(data)
    out = cli(
        "evaluate", str(tiny_checkpoint), "--data", str(data), "--kind", "perplexity", "--device", device
    )
    assert out.exit_code == 2, out.output
    assert (
        out.stderr.splitlines()[-1]
        == f"kbitlaw: error: --device {device}: CUDA is not available on this machine"
    )
    assert out.stdout == ""


def test_nightly_bad_device_fails_before_the_run(no_gpu, tmp_path):
    out = cli("nightly", "--store", str(tmp_path / "store"), "--device", "tpu")
    assert out.exit_code == 2
    assert out.stderr.strip() == "kbitlaw: error: --device tpu: not a device (use auto, cpu, cuda or cuda:N)"
    out = cli("nightly", "--store", str(tmp_path / "store"), "--device", "cuda")
    assert (out.exit_code, out.stderr.strip()) == (
        2,
        "kbitlaw: error: --device cuda: CUDA is not available on this machine",
    )
    assert not (tmp_path / "store").exists()  # nothing ran


# -- evaluations record where they ran, and keep a GPU model's originals on the CPU -------------------


def spy_quantize(monkeypatch, module) -> list:
    """Record the pristine_device each quantize_model call of `module` gets, as if on a GPU."""
    seen, real = [], module.quantize_model
    monkeypatch.setattr(module, "pristine_device", lambda model: "cpu")  # what a CUDA model gets

    def quantize(model, spec, **kwargs):
        seen.append(kwargs.get("pristine_device"))
        return real(model, spec, **kwargs)

    monkeypatch.setattr(module, "quantize_model", quantize)
    return seen


def test_evaluate_specs_records_cpu_and_passes_pristine_device(no_gpu, tiny_checkpoint, monkeypatch):
    seen = spy_quantize(monkeypatch, run)
    rows = run.evaluate_specs(str(tiny_checkpoint), pl.DataFrame(ROWS), "perplexity", "fp16,int4-b64")
    assert rows and {r["device"] for r in rows} == {"cpu"}  # auto on a machine without CUDA
    assert seen == ["cpu", "cpu"]
    with pytest.raises(ValueError, match="^device cuda: CUDA is not available"):
        run.evaluate_specs(str(tiny_checkpoint), pl.DataFrame(ROWS), "perplexity", "fp16", device="cuda")


def test_nightly_unit_of_work_records_cpu_and_checks_its_device(
    no_gpu, tiny_checkpoint, tmp_path, monkeypatch
):
    seen = spy_quantize(monkeypatch, sweep)
    store, df = Store(str(tmp_path / "store")), pl.DataFrame(ROWS)
    ref = sweep.DatasetRef("rows", "perplexity", "datasets/clean/rows/x.parquet", frame_sha(df))
    store.write_parquet(ref.key, df)
    ckpt = resolve(str(tiny_checkpoint))
    with pytest.raises(ValueError, match="^device cuda:2: CUDA is not available"):
        sweep.evaluate_checkpoint_spec(store, ckpt, "int4-b64", [ref], device="cuda:2")  # the task's one line
    out = sweep.evaluate_checkpoint_spec(store, ckpt, "int4-b64", [ref], device="auto")
    assert out["computed"] == ["rows"] and seen == ["cpu"]
    rows = store.read_parquet(sweep.result_key(ckpt.fingerprint, "int4-b64", ref))
    assert set(rows["device"]) == {"cpu"}


# -- bench/gpu.py's dry run -----------------------------------------------------------------------------


@pytest.mark.slow
def test_gpu_bench_dry_run_on_cpu():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--tiny"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    table = dict(line.split("  ", 1) for line in out.stdout.splitlines())
    table = {k.strip(): v.strip() for k, v in table.items()}
    assert list(table) == [
        "device",
        "model",
        "datasets",
        "grid",
        "load (kbitlaw)",
        "time per checkpoint",
        "time per spec",
        "fp16 spec",
        "slowest spec",
        "lm-eval (unquantized)",
        "ratio spec/lm-eval",
        "ratio fp16/lm-eval",
        "peak GPU memory",
        "fp16 acc gap",
    ]
    assert table["device"] == "cpu (cpu); results record cpu"
    assert table["datasets"] == f"{len(load_dataset_specs(BUILTIN_SPECS))} x 16 rows"  # every builtin suite
    assert table["grid"] == "fp16,int4-b64,nf4-b64 (3 specs)"
    assert table["peak GPU memory"].startswith("kbitlaw n/a")
    assert float(table["ratio spec/lm-eval"]) > 0
    assert table["fp16 acc gap"].startswith("0.0000")  # same model, same rows, same CPU kernels
