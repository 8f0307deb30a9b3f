"""Real data no test here generated (../shared/realdata/: a demo family trained on another machine):
`kbitlaw fit`, `report` and `predict` succeed on it and on subsets of it, every `ok` entry passes
its gates, and each law that went wrong there while saying `ok` now says `failed` or
`unidentified`, with its reason."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import polars as pl
import pytest

from kbitlaw.law import fitdoc
from kbitlaw.law.document_gates import check_document
from kbitlaw.status import OK, STATUSES
from tests.conftest import kbitlaw as run_kbitlaw
from tests.realdata import untar_realdata

pytestmark = pytest.mark.slow


def kbitlaw(*args: str):
    return run_kbitlaw(*args, env={**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"}, timeout=900)



def results_of(store: Path) -> pl.DataFrame:
    """Every results file's rows, each with the file it came from."""
    frames = [
        pl.read_parquet(f)
        .select("checkpoint_id", "n_params", "step", "quant")
        .unique()
        .with_columns(file=pl.lit(str(f)))
        for f in sorted((store / "results").rglob("*.parquet"))
    ]
    return pl.concat(frames)


def subset(source: Path, dest: Path, keep: pl.Expr) -> Path:
    """A store holding the source's datasets and only the results (and samples) whose rows match."""
    shutil.copytree(source / "datasets", dest / "datasets")
    files = results_of(source).filter(keep)["file"].unique().to_list()
    for f in files:
        rel = Path(f).relative_to(source / "results")
        for kind in ("results", "samples"):
            src = source / kind / rel
            if src.exists():
                (dest / kind / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dest / kind / rel)
    return dest


@pytest.fixture(scope="module")
def real_store(tmp_path_factory) -> Path:
    return untar_realdata(tmp_path_factory.mktemp("realdata") / "store")


def assert_honest(doc: dict) -> None:
    """Every ok entry passes its gates; every entry has a known status and says why."""
    assert check_document(doc) == []
    for section in ("power_law", "threshold", "damage", "curves"):
        for e in fitdoc.entries(doc, section):
            assert e["status"] in STATUSES and isinstance(e.get("reason"), str) and e["reason"], e
    assert isinstance(doc["joint_law"], list)


def fit_and_check(store: Path) -> dict:
    """`kbitlaw fit --store` exits 0; its document's every ok entry passes the gates; `report`
    and `predict` exit 0 on it."""
    fit = kbitlaw("fit", "--store", str(store), "--json")
    assert fit.returncode == 0, fit.stderr[-2000:]
    doc = json.loads(fit.stdout)
    assert_honest(doc)
    check = kbitlaw("fit", "--store", str(store), "--check")  # reads the stored fit back
    assert check.returncode == 0 and "every ok entry passes its gates" in check.stdout + check.stderr
    report = kbitlaw("report", "--store", str(store))
    assert report.returncode == 0, report.stderr[-2000:]
    index = Path(report.stdout.strip().removeprefix("file://"))
    assert index.exists() and "<html" in index.read_text()[:500].lower()
    predict = kbitlaw("predict", "--store", str(store), "--n-params", "2e6", "--tokens", "2e6", "--json")
    assert predict.returncode == 0, predict.stderr[-2000:]
    json.loads(predict.stdout)
    return doc


def fit_and_check_in_process(store: Path) -> dict:
    """fit_and_check's checks through the library calls the commands make (the whole store's test
    runs the commands themselves): the fit, its stored document gated, the report, a prediction."""
    from kbitlaw.law.io import fit_store
    from kbitlaw.law.joint.predict import predict_from_document
    from kbitlaw.report.build import build_report
    from kbitlaw.store import LATEST_FIT, Store

    s = Store(str(store))
    fitted = fit_store(s)
    doc = json.loads(json.dumps(fitted.doc))  # as `fit --json` prints it
    assert_honest(doc)
    fit_key = s.read_json(LATEST_FIT)["fit"]
    assert check_document(s.read_json(fit_key)) == []  # `fit --check` reads the stored fit back
    report = build_report(s, fit_key)
    assert not report.get("section_errors"), report.get("section_errors")
    assert "<html" in s.read_bytes(report["key"]).decode()[:500].lower()
    json.dumps(predict_from_document(doc, 2e6, 2e6), allow_nan=False)
    return doc


def by(doc: dict, section: str, **match: str) -> list[dict]:
    return [e for e in fitdoc.entries(doc, section) if all(e.get(k) == v for k, v in match.items())]


def test_the_whole_store_is_honest(real_fit_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(real_fit_store, store)  # fitted once per session: `fit` finds its stored fit
    doc = fit_and_check(store)
    # what main at 36bd87f called ok (shared/realdata/README.md) is now failed or unidentified
    wrong_today = [
        *by(doc, "damage", scheme="fp<k>-b64"),  # alpha 103, gamma 147, C null
        *by(doc, "damage", scheme="nf<k>-b64"),  # beta -1.19, C 3.9e9
        *by(doc, "damage", scheme="int<k>-b64"),  # C 4.5e7
        *by(doc, "damage", scheme="fp<k>-b16-se4m3"),  # C's interval [8e-204, 2.7e167]
        *by(doc, "power_law", quant="fp16", metric="loss"),  # A's interval [2.06, 1.5e16]
    ]
    assert len(wrong_today) == 2 * 4 + 1
    for e in wrong_today:
        assert e["status"] in ("failed", "unidentified"), (e.get("scheme") or e.get("quant"), e["status"])
        assert e["reason"] and e["reason"] != "passed its gates"
    # The joint law (A 8.2e19, alpha 4.4, held-out error 494,358 nats at 36bd87f; then failed on
    # alpha): its cosine runs' checkpoints plan more tokens than they have seen and no schedule is
    # known, so only each run's end is a finished model of its tokens: too few to fit, and it says so.
    (joint,) = fitdoc.joint_laws(doc)
    assert joint["status"] == "insufficient data" and joint["form"] == "chinchilla"
    assert "fitted on the 6 finished checkpoints; 18 intermediate checkpoints" in joint["reason"]
    # the laws the data do identify stay usable: the gates are not a blanket "no"
    assert [e for e in fitdoc.entries(doc, "threshold") if e["status"] == OK]
    assert doc["recommendation"]["status"] == OK


@pytest.mark.parametrize(
    "name, keep",
    [
        ("without the largest size", lambda r: pl.col("n_params") < r["n_params"].max()),
        ("round-to-nearest specs only", lambda r: ~pl.col("quant").str.ends_with("-gptq")),
        (
            "the first two rounds of checkpoints",
            lambda r: pl.col("step").rank("dense").over("n_params") <= 2,
        ),
    ],
)
def test_subsets_are_honest(real_store, tmp_path, name, keep):
    rows = results_of(real_store)
    store = subset(real_store, tmp_path / "store", keep(rows))
    kept = results_of(store)
    assert 0 < kept.height < rows.height, name
    fit_and_check_in_process(store)
