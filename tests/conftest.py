"""Shared fixtures: a real S3-protocol server (moto's standalone server), tiny checkpoints, the
one `kbitlaw` subprocess helper, and `built_once` for what every xdist worker shares."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from realdata import fit_real_store

# Offline by construction: nothing in the tests may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry attempts (no network)
# One intra-op thread per process while pytest-xdist runs a worker per core: two workers with two
# OpenMP threads each on two cores spin against each other (a multiple-choice set measured 5 s
# instead of 0.04 s). Set before torch is imported here; subprocesses the tests start inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:  # a plugin imported it first: the variable came too late
        sys.modules["torch"].set_num_threads(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stable_seed(*parts: object) -> int:
    """A seed from names and numbers that is the same in every process (hash() of a str is not:
    Python salts it per process)."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def kbitlaw(
    *args: str, env: dict[str, str] | None = None, cwd: Path | str | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`kbitlaw ARGS` as a user runs it: a subprocess of this interpreter, output captured."""
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "kbitlaw", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )
    print(f"kbitlaw {' '.join(args[:2])}: exit {out.returncode} in {time.monotonic() - started:.1f} s")
    return out


# The files that take longest (pytest --durations, 2 cores, 2026-12-05), started first: with one
# file per worker at a time (--dist loadfile), the longest file started last runs alone at the end.
LONGEST_FIRST = (
    "test_prefect_e2e.py",  # 60-75 s: a real server, worker, deployments and automation
    "test_nightly.py",  # 90 s
    "test_gptq.py",
    "test_train.py",
    "test_realdata.py",
    "test_api_server.py",
    "test_joint_law.py",
    "test_report_fuzz.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    """The longest files first, then the other files with slow tests, then the rest; each file's
    tests kept together (module fixtures are built once). The Makefile passes
    --no-loadscope-reorder: xdist would otherwise order files by their number of tests."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item) -> tuple[int, int]:
        name = item.path.name
        if name in LONGEST_FIRST:
            return 0, LONGEST_FIRST.index(name)
        return (1 if item.path in slow_files else 2), 0

    items.sort(key=rank)


# -- built once per test session, shared by every xdist worker ---------------------------------------

# Kept in the environment, not in a global: this file is imported twice (as conftest, tests.conftest).
SHARED_ENV = "KBITLAW_TEST_SHARED_DIR"


@pytest.fixture(scope="session", autouse=True)
def shared_dir(tmp_path_factory) -> Path:
    """A folder every worker of this pytest run sees (xdist gives each worker its own basetemp
    under one parent)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    root.mkdir(exist_ok=True)
    os.environ[SHARED_ENV] = str(root)
    return root


def built_once(name: str, build: Callable[[Path], object]) -> Path:
    """`build(folder)` run once per test session whichever worker asks first (the others wait on a
    file lock); returns the folder. Tests must not write to it: copy it first."""
    from filelock import FileLock

    root = Path(os.environ[SHARED_ENV])
    target = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not (root / f"{name}.done").exists():
            shutil.rmtree(target, ignore_errors=True)
            build(target)
            (root / f"{name}.done").touch()
    return target


def migrate_prefect_database(folder: Path) -> None:
    """A PREFECT_HOME holding Prefect's SQLite database with every migration applied."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(folder), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    folder.mkdir(parents=True)
    upgrade = [str(Path(sys.executable).parent / "prefect"), "server", "database", "upgrade", "-y"]
    subprocess.run(upgrade, env=env, check=True, capture_output=True, timeout=600)


def used_prefect_home(home: Path) -> Path:
    """A PREFECT_HOME as a user who ran Prefect before has it: its database migrated (built once per
    session). A server starts on it in about half the time of an empty home (6 s against 11 s idle:
    the migrations); tests of a first run use an empty home instead."""
    template = built_once("prefect-home", migrate_prefect_database)
    home.mkdir(parents=True, exist_ok=True)
    for db in template.glob("prefect.db*"):  # with its write-ahead log, if one was left
        shutil.copy(db, home / db.name)
    return home


@pytest.fixture(scope="session", autouse=True)
def stop_local_apis(tmp_path_factory):
    """Commands run without PREFECT_API_URL keep a local Prefect API per PREFECT_HOME for the next
    command (kbitlaw.flows.api_server); at the session's end, stop those whose home is this
    session's temporary folder (a test that checks the stop itself has stopped its own)."""
    yield
    import signal

    base = str(tmp_path_factory.getbasetemp()).encode()
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        home = next((v for v in environ if v.startswith(b"KBITLAW_API_HOME=")), b"")
        if base in home:
            try:
                os.kill(int(entry.name), signal.SIGTERM)
            except (OSError, ValueError):
                pass


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3 server as a subprocess on 127.0.0.1; yields its endpoint URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120  # a hang guard: moto starts in seconds idle
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.1)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point kbitlaw at the moto server with throwaway credentials; yields a fresh bucket name."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("KBITLAW_S3_ENDPOINT", s3_server)
    import boto3

    bucket = f"kbitlaw-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(params=["numba", "torch"])
def quant_kernels(request, monkeypatch) -> str:
    """Runs a quantization test on both CPU paths: the fused numba kernels (quant/cpu_kernels.py,
    the default) and the torch ops they replace (also the GPU path); both must give the same bits."""
    from kbitlaw.quant import cpu_kernels

    monkeypatch.setenv("KBITLAW_KERNELS", request.param)
    assert cpu_kernels.available() == (request.param == "numba")
    return request.param


@pytest.fixture(params=["local", "s3"])
def store_uri(request, tmp_path):
    """The same store suite runs against a local directory and a real S3-protocol server."""
    if request.param == "local":
        return str(tmp_path / "store")
    bucket = request.getfixturevalue("s3_env")
    return f"s3://{bucket}/prefix"


@pytest.fixture(scope="session")
def real_fit_store(shared_dir) -> Path:
    """The real demo family's store (tests/realdata.py) fitted once per session. Tests must not
    write to it: copy it first."""
    return built_once("realdata-fitted", fit_real_store)


@pytest.fixture(scope="session")
def finished_real_doc(real_fit_store: Path) -> dict:
    """The real results fitted with every checkpoint declared finished. The real demo's runs decay
    their learning rate and say so by a tokens_planned beyond their intermediate checkpoints, with
    no schedule: its stored fit's joint law leaves those out and has too few checkpoints left to
    fit (test_realdata.py). Declared finished, all of them are fitted, as before the joint law read
    schedules, and the law has numbers for the fuzz tests to reach."""
    import polars as pl

    from kbitlaw.law.common import json_safe
    from kbitlaw.law.document import FitConfig, fit_laws
    from kbitlaw.law.io import default_chance, read_results_store
    from kbitlaw.store import Store

    store = Store(str(real_fit_store))
    results = read_results_store(store).with_columns(finished=pl.lit(True))
    config = FitConfig(chance=default_chance(results, store))  # as fit_store fits it
    return json.loads(json.dumps(json_safe(fit_laws(results, config).doc)))


# -- tiny checkpoints -----------------------------------------------------------------------------

WORDS = "the a cat dog sat on mat red blue big small is was and yes no one two three four five".split()


def make_tokenizer():
    """A tiny word-level tokenizer in Hugging Face format (built here, nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1}
    for w in WORDS:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", bos_token="<eos>"
    )


def make_checkpoint(
    path: Path,
    *,
    arch: str = "neox",
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    sidecar: dict | None = None,
    tokenizer: bool = True,
) -> Path:
    """Save a random-init causal LM (GPT-NeoX or GPT-2) with save_pretrained as safetensors."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    vocab = len(WORDS) + 2
    if arch == "neox":
        config = GPTNeoXConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=4 * hidden,
            vocab_size=vocab,
            max_position_embeddings=64,
            bos_token_id=1,
            eos_token_id=1,
        )
        model = GPTNeoXForCausalLM(config)
    else:
        config = GPT2Config(
            n_embd=hidden,
            n_layer=layers,
            n_head=4,
            vocab_size=vocab,
            n_positions=64,
            bos_token_id=1,
            eos_token_id=1,
        )
        model = GPT2LMHeadModel(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer:
        make_tokenizer().save_pretrained(path)
    if sidecar is not None:
        (path / "kbitlaw.json").write_text(json.dumps(sidecar))
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "tiny",
        seed=1,
        sidecar={"family": "tiny", "size": "h32", "step": 100, "tokens_seen": 6400},
    )


# -- a tiny *trained* model with a byte-level BPE tokenizer (for evaluation tests) -----------------

SUBJECTS = ["the cat", "the dog", "a bird", "the red fox", "my friend"]
VERBS = ["sat on", "ran to", "looked at", "jumped over"]
OBJECTS = ["the mat", "the house", "a tree", "the big river", "the small box"]


def corpus_sentences(n: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for _ in range(n)]


def make_bpe_tokenizer(texts: list[str], vocab_size: int = 300):
    """The byte-level BPE the demo family uses (kbitlaw.demo.train), trained on `texts`."""
    from kbitlaw.demo.train import train_tokenizer

    return train_tokenizer(texts, vocab_size)


def make_trained_checkpoint(path: Path, *, steps: int = 150, window: int = 64, seed: int = 0) -> Path:
    """A 2-layer GPT-NeoX trained for a few seconds on a toy grammar, saved with its BPE tokenizer."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    texts = corpus_sentences(2000, seed)
    tokenizer = make_bpe_tokenizer(texts)
    ids = tokenizer(" ".join(texts))["input_ids"]
    config = GPTNeoXConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        vocab_size=len(tokenizer),
        max_position_embeddings=window,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPTNeoXForCausalLM(config)
    data = torch.tensor(ids)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - window - 1, (16,), generator=gen)
        batch = torch.stack([data[s : s + window] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def trained_checkpoint(shared_dir) -> Path:
    """Trained once per test session for every worker (10-20 s). Tests must not write to it."""
    return built_once("trained", lambda dest: make_trained_checkpoint(dest / "toy")) / "toy"


# -- a tiny checkpoint family and dataset specs for flow tests ---------------------------------------

FAMILY_SIZES = (("h32", 32, 1), ("h48", 48, 2))
FAMILY_STEPS = (10, 20)


def make_family(root: Path, sizes=FAMILY_SIZES, steps=FAMILY_STEPS, family: str = "tiny") -> list[Path]:
    """The family of `build_family` in `root/<family>`, built once per test session and copied."""
    key = stable_seed(family, *(p for size in sizes for p in size), *steps)
    shared = built_once(f"family-{key:08x}", lambda dest: build_family(dest, sizes, steps, family))
    shutil.copytree(shared, root, dirs_exist_ok=True)
    return [root / family / name / f"step-{step}" for name, _, _ in sizes for step in steps]


def build_family(root: Path, sizes=FAMILY_SIZES, steps=FAMILY_STEPS, family: str = "tiny") -> list[Path]:
    """Random-init GPT-NeoX checkpoints with a byte-level BPE tokenizer trained on the builtin world;
    the same bytes in every process (seeds from stable_seed)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from kbitlaw.data import world

    tokenizer = make_bpe_tokenizer(list(world.training_corpus(300, seed=0)), vocab_size=400)
    paths = []
    for name, hidden, layers in sizes:
        for i, step in enumerate(steps):
            torch.manual_seed(stable_seed(name, step))
            config = GPTNeoXConfig(
                hidden_size=hidden,
                num_hidden_layers=layers,
                num_attention_heads=4,
                intermediate_size=4 * hidden,
                vocab_size=len(tokenizer),
                max_position_embeddings=256,
                bos_token_id=0,
                eos_token_id=0,
            )
            path = root / family / name / f"step-{step}"
            path.mkdir(parents=True, exist_ok=True)
            GPTNeoXForCausalLM(config).save_pretrained(path, safe_serialization=True)
            tokenizer.save_pretrained(path)
            (path / "kbitlaw.json").write_text(
                json.dumps(
                    {"family": family, "size": name, "step": step, "tokens_seen": step * 1000 * (i + 1)}
                )
            )
            paths.append(path)
    return paths


def write_specs(directory: Path, n: int = 12) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, kind, chance in (
        ("logic", "multiple_choice", 0.25),
        ("cloze", "cloze", 0.0),
        ("text", "perplexity", None),
    ):
        spec = {
            "name": name,
            "kind": kind,
            "source": f"builtin:{name}",
            "params": {"n": n, "seed": 0, "difficulty": 1},
            "min_rows": 4,
        }
        if chance is not None:
            spec["chance"] = chance
        (directory / f"{name}.yaml").write_text(json.dumps(spec))
    return directory


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect test server (temporary SQLite) for the whole session; yields its API URL."""
    import tempfile
    from unittest import mock

    from prefect.settings import PREFECT_API_URL
    from prefect.testing import utilities

    template = built_once("prefect-home", migrate_prefect_database)

    def migrated_temp_dir() -> str:
        # the harness puts its database, prefect-test.db, in a new temporary folder: start it
        # migrated (5 of the server's 11 s start, per worker)
        folder = tempfile.mkdtemp()
        shutil.copy(template / "prefect.db", Path(folder) / "prefect-test.db")
        return folder

    with mock.patch.object(utilities, "mkdtemp", migrated_temp_dir):
        with utilities.prefect_test_harness(server_startup_timeout=300):
            yield PREFECT_API_URL.value()
