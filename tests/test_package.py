"""The package as a user gets it: `import kbitlaw`, its public API, one-way imports, a real wheel."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import polars as pl
import pytest
import torch

import kbitlaw

pytestmark = pytest.mark.slow  # builds and installs the wheel

ROOT = Path(__file__).resolve().parents[1]
API = [
    "QuantSpec",
    "fake_quantize",
    "quantize_",
    "restore",
    "load_checkpoint",
    "evaluate",
    "fit_laws",
    "Store",
]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_the_library_never_imports_flows_or_prefect():
    """Library <- flows <- CLI: nothing under tasks/ (the package kbitlaw, minus its __main__ that
    is the command line) imports kbitlaw.flows or Prefect."""
    offenders = []
    for path in sorted((ROOT / "tasks").rglob("*.py")):
        if path.name == "__main__.py":
            continue
        for module in imported_modules(path):
            if module.startswith(("kbitlaw.flows", "prefect")) or module.split(".")[0] in ("tasks", "flows"):
                offenders.append(f"{path.relative_to(ROOT)}: {module}")
    assert offenders == []


def test_public_api_is_complete():
    assert set(API) <= set(kbitlaw.__all__)
    for name in kbitlaw.__all__:
        assert getattr(kbitlaw, name) is not None, name
    assert kbitlaw.__version__ and kbitlaw.__version__[0].isdigit()


def test_import_kbitlaw_does_not_import_torch():
    code = "import sys, kbitlaw; print('torch' in sys.modules, 'prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_quantize_in_place_and_restore_bit_identical(trained_checkpoint):
    loaded = kbitlaw.load_checkpoint(str(trained_checkpoint), device="cpu")
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    report = kbitlaw.quantize_(loaded.model, "int3")
    assert report.bits_per_param == pytest.approx(3 + 16 * 8 / report.n_params_quantized, rel=0.01)
    changed = [k for k, v in loaded.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all("layers" in k for k in changed)
    kbitlaw.restore(loaded.model)
    assert all(torch.equal(v, before[k]) for k, v in loaded.model.state_dict().items())
    with kbitlaw.quantized(loaded.model, kbitlaw.QuantSpec.parse("nf4-b64")) as nf4:
        assert nf4.spec.block_size == 64
        assert not all(torch.equal(v, before[k]) for k, v in loaded.model.state_dict().items())
    assert all(torch.equal(v, before[k]) for k, v in loaded.model.state_dict().items())


def test_fake_quantize_matches_the_spec_codebook():
    w = torch.randn(128, 64, generator=torch.Generator().manual_seed(0))
    q = kbitlaw.fake_quantize(w, "int4-b64")
    blocks = q.reshape(-1, 64) / w.reshape(-1, 64).abs().amax(1, keepdim=True).half().float()
    assert torch.allclose(blocks * 7, (blocks * 7).round(), atol=1e-3)  # 15 levels i/7
    assert not torch.equal(q, w)


def test_evaluate_returns_the_results_schema_and_fit_laws_a_document(trained_checkpoint):
    from kbitlaw.eval.results import RESULT_SCHEMA
    from kbitlaw.law.sim import simulate_results

    rows = [
        {"id": str(i), "context": f"the cat {i} sat on", "choices": ["the mat", "a tree"], "gold": i % 2}
        for i in range(6)
    ]
    results = kbitlaw.evaluate(str(trained_checkpoint), pl.DataFrame(rows), "fp16,int4-b64", dataset="toy")
    assert results.schema == pl.Schema(RESULT_SCHEMA)
    assert sorted(results["quant"].unique()) == ["fp16", "int4-b64"]
    assert set(results["dataset"]) == {"toy"} and set(results["n_examples"]) == {6}
    doc = kbitlaw.fit_laws(
        simulate_results([1e7, 4e7, 1.6e8, 6.4e8], [2e10], ["fp16", "int8-b64", "int4-b64", "int3-b64"]),
        n_boot=20,
    )
    assert {"results_sha", "recommendation", "threshold", "power_law", "damage", "extrapolation"} <= set(doc)
    assert doc["recommendation"].get("quant")
    too_little = kbitlaw.fit_laws(results, n_boot=20)
    assert (
        too_little["recommendation"]["status"] == "insufficient data"
        and too_little["recommendation"]["reason"]
    )


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """The wheel built from this checkout, installed (not editable) into a fresh venv that borrows
    only the third-party packages of the test environment (a path entry: its .pth files, among
    them the editable install's finder, are not run)."""
    where = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(where),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    env_dir = where / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip()
    (Path(site) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(where.glob("kbitlaw-*.whl"))
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", site, str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    return env_dir


def test_the_wheel_installs_only_kbitlaw(wheel_venv):
    python = wheel_venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    assert not (site / "tasks").exists() and not (site / "flows").exists()
    assert (site / "kbitlaw" / "flows" / "cli" / "__init__.py").is_file()
    assert sorted(p.name for p in (site / "kbitlaw" / "dataset_specs").glob("*.yaml")) == sorted(
        p.name for p in (ROOT / "datasets").glob("*.yaml")
    )
    code = "import kbitlaw, kbitlaw.flows.cli; print(kbitlaw.__file__)"
    out = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, timeout=120, cwd=site.root
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(site)), out.stdout
    no_tasks = subprocess.run(
        [str(python), "-c", "import tasks"], capture_output=True, text=True, cwd=site.root
    )
    assert no_tasks.returncode == 1 and "No module named 'tasks'" in no_tasks.stderr


def test_the_wheel_cleans_and_validates_from_an_empty_directory(wheel_venv, tmp_path):
    """The builtin dataset specs ship inside the package: no checkout, no ./datasets needed."""
    python = wheel_venv / "bin" / "python"
    env = {**os.environ, "KBITLAW_STORE": str(tmp_path / "store")}
    env.pop("KBITLAW_DATASET_SPECS", None)
    run = [str(python), "-m", "kbitlaw", "datasets"]
    clean = subprocess.run(
        [*run, "clean", "logic", "cloze"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert clean.returncode == 0, clean.stderr
    lines = clean.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["logic", "cloze"]
    assert all("clean" in line and "\tcleaned\t" in line for line in lines)
    valid = subprocess.run([*run, "validate", "logic"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert valid.returncode == 0, valid.stderr
    assert valid.stdout.startswith("logic\tok\t")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # nothing else written in the cwd
