"""The test models are the same bytes in every run of the suite: their seeds must not depend on the
process (hash() of a str is salted per process), so a failure seen once can be seen again."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import build_family, make_checkpoint, stable_seed

ROOT = Path(__file__).resolve().parents[1]
SIZES, STEPS = (("h32", 32, 1), ("h48", 48, 2)), (10,)
BUILD = (
    "import sys; from pathlib import Path; sys.path.insert(0, 'tests'); "
    "from tests.conftest import build_family, make_checkpoint; "
    f"build_family(Path(sys.argv[1]), sizes={SIZES!r}, steps={STEPS!r}); "
    "make_checkpoint(Path(sys.argv[1]) / 'one', seed=3)"
)


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_stable_seed_is_a_pure_function_of_its_parts():
    assert stable_seed("h32", 10) == stable_seed("h32", "10") != stable_seed("h32", 20)
    out = subprocess.run(
        [sys.executable, "-c", "from tests.conftest import stable_seed; print(stable_seed('h32', 10))"],
        cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": "4321", "PYTHONPATH": str(ROOT / "tests")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout) == stable_seed("h32", 10)


def test_two_processes_build_identical_test_models(tmp_path):
    here = tmp_path / "here"
    build_family(here, sizes=SIZES, steps=STEPS)
    make_checkpoint(here / "one", seed=3)
    there = tmp_path / "there"
    out = subprocess.run(
        [sys.executable, "-c", BUILD, str(there)],
        cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": "4321"},  # another salt than this process's
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    mine, theirs = digests(here), digests(there)
    assert any(name.endswith("model.safetensors") for name in mine)
    assert mine == theirs
