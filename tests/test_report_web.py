"""Reports over HTTP (kbitlaw.report.web): the server on a local and an S3 store, what it refuses,
public_url, `kbitlaw serve-reports`, and the summary's links opened in headless Chromium."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import polars as pl
import pytest

from kbitlaw.flows.artifacts import FRONTIER_KEY, summary_markdown
from kbitlaw.hashing import sha256_bytes
from kbitlaw.law.document import FitConfig
from kbitlaw.law.io import LATEST, fit_store
from kbitlaw.law.sim import simulate_results
from kbitlaw.report.build import build_report
from kbitlaw.report.web import REPORT_URL_ENV, public_url, start_report_server
from kbitlaw.store import LATEST_REPORT, Store

# The grid of tests/test_report.py, smaller: enough sizes for a recommendation and several data
# types at 3 and 4 bits, so the report draws both figures the summary shows.
SPECS = ["fp16", "int8-b64", "int4-b64", "int3-b64", "fp4-b64", "quantile4-b64", "dynamic4-b64"]
SIZES = list(np.geomspace(2e7, 3e9, 5))
CONFIG = FitConfig(n_boot=20, chance={"hellaswag": 0.25, "piqa": 0.5, "lambada": 0.0})
SECRET = b"TOPSECRET-do-not-serve"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def put_results(store: Store, df: pl.DataFrame) -> None:
    """One object per (checkpoint, spec), as evaluation writes them."""
    for (ckpt, quant), part in df.group_by(["checkpoint_id", "quant"]):
        name = sha256_bytes(f"{ckpt}|{quant}".encode())[:16]
        store.write_parquet(f"results/{ckpt.replace('/', '_')}/{quant}/{name}.parquet", part)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A local store with a fit of the simulated family and its report."""
    store = Store(tmp_path_factory.mktemp("web") / "store")
    put_results(store, simulate_results(SIZES, [2e9, 2e10], SPECS, seed=11))
    fit_store(store, CONFIG)
    report = build_report(store, store.read_json(LATEST)["fit"])
    return {"store": store, "report": report, "doc": store.read_json(report["summary"]["fit_key"])}


@pytest.fixture
def served(built, store_uri):
    """The built report copied into a fresh local or S3 store beside things never to be served (a
    result, a fit, a checkpoint, a secret next to the store), and the server on it (port 0)."""
    src, store = built["store"], Store(store_uri)
    wanted = [*src.list("reports"), src.list("results")[0], LATEST, built["report"]["summary"]["fit_key"]]
    for key in wanted:
        store.write_bytes(key, src.read_bytes(key))
    store.write_bytes("checkpoints/tiny/h32/step-10/model.safetensors", SECRET)
    store.write_bytes("datasets/clean/piqa/sha-piqa.json", SECRET)
    store.write_bytes("datasets/validation/piqa/sha-piqa.html", b"<html><p>validation of piqa</p></html>")
    Store(store_uri.rsplit("/", 1)[0]).write_bytes("secret.txt", SECRET)  # beside the store's root
    server, base = start_report_server(store_uri, port=0, quiet=True)
    reads: list[str] = []
    read_bytes = server.store.read_bytes
    server.store.read_bytes = lambda key: reads.append(key) or read_bytes(key)  # every key the server reads
    yield {"base": base, "store": store, "server": server, "reads": reads, "report": built["report"]}
    server.shutdown()
    server.server_close()


def raw_get(
    base: str, target: bytes | str, method: str = "GET", headers: str = ""
) -> tuple[int, dict, bytes]:
    """One request with the target sent byte for byte (no client-side normalisation or checks)."""
    if isinstance(target, str):
        target = target.encode("latin-1")
    url = urlsplit(base)
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        s.sendall(method.encode() + b" " + target + f" HTTP/1.0\r\nHost: x\r\n{headers}\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), fields, body


# -- the server --------------------------------------------------------------------------------------


def test_serves_the_report_page_and_its_figures(served):
    base, key = served["base"], served["report"]["key"]
    quant = served["report"]["summary"]["recommendation"]["quant"]
    status, head, body = raw_get(base, "/")
    assert status == 302 and head["location"] == f"/{key}" and head["cache-control"] == "no-cache"
    status, head, body = raw_get(base, f"/{key}")
    assert status == 200 and head["content-type"] == "text/html; charset=utf-8"
    assert f"<code>{quant}</code>" in body.decode()
    status, head, body = raw_get(base, f"/{key.rsplit('/', 1)[0]}/scaling.png")
    assert status == 200 and head["content-type"] == "image/png" and body.startswith(PNG_MAGIC)
    assert int(head["content-length"]) == len(body)
    status, head, body = raw_get(base, f"/{LATEST_REPORT}")
    assert (
        status == 200 and head["content-type"] == "application/json" and head["cache-control"] == "no-cache"
    )
    status, head, body = raw_get(base, "/datasets/validation/piqa/sha-piqa.html")
    assert status == 200 and b"validation of piqa" in body
    status, head, body = raw_get(base, f"/{key}", method="HEAD")
    assert status == 200 and int(head["content-length"]) > 0 and body == b""
    status, _, body = raw_get(base, f"/{key}", headers=f"If-None-Match: {head['etag']}\r\n")
    assert status == 304 and body == b""


NOT_SERVED = [
    "results/{result}",  # present in the store, never served
    "{fit}",
    LATEST,
    "checkpoints/tiny/h32/step-10/model.safetensors",
    "datasets/clean/piqa/sha-piqa.json",
    "reports/{sha}/missing.png",
    "reports/{sha}/index.parquet",  # not a type the reports have
    "nothing/here.html",
]


def test_the_reports_validation_links_open_on_the_server(served):
    """The page links validation pages relative to itself, so they open over HTTP (and locally)."""
    from urllib.parse import urljoin

    from kbitlaw.report.sections import relative_pages

    store = served["store"]
    page = store.url("datasets/validation/piqa/sha-piqa.html")
    rel = relative_pages(store, {"name": "piqa", "validation": {"html": page}})["validation"]["html"]
    assert rel == "../../datasets/validation/piqa/sha-piqa.html"
    url = urljoin(f"{served['base']}/{served['report']['key']}", rel)
    status, _, body = raw_get(served["base"], urlsplit(url).path)
    assert status == 200 and b"validation of piqa" in body


def test_serves_nothing_but_reports_and_validation_pages(served):
    summary = served["report"]["summary"]
    names = {
        "result": served["store"].list("results")[0],
        "fit": summary["fit_key"],
        "sha": summary["results_sha"],
    }
    for target in NOT_SERVED:
        status, _, body = raw_get(served["base"], "/" + target.format(**names))
        assert status == 404 and SECRET not in body, target
    assert [k for k in served["reads"] if not k.startswith("reports/")] == [], "read a key it may not serve"


TRAVERSALS = [
    "/../secret.txt",
    "/reports/../../secret.txt",
    "/%2e%2e/secret.txt",
    "/reports/%2e%2e/%2e%2e/secret.txt",
    "/reports%2f..%2f..%2fsecret.txt",
    "/%252e%252e/secret.txt",  # encoded twice: decoded once, the '%' left is refused
    "/reports/%c0%ae%c0%ae/secret.txt",  # overlong UTF-8 dots
    "//etc/passwd",
    "/%2Fetc%2Fpasswd",
    "/C:/Windows/win.ini",
    "/reports\\..\\..\\secret.txt",
    "/reports%5c..%5csecret.txt",
    b"/reports/x\x00.html",
    "/reports/x%00.html",
    "/reports/x%0a.html",
    "/reports//latest.json",
    "/reports/./latest.json",
    "/reports/",
    "/.",
    "http://example.com/../secret.txt",
]


def test_traversal_is_refused_before_the_store_is_touched(served, store_uri):
    opened: list[str] = []
    watch_opens(opened)
    try:
        for target in TRAVERSALS:
            status, _, body = raw_get(served["base"], target)
            assert 400 <= status < 500, (target, status)
            assert SECRET not in body
        refused = list(opened)
        assert raw_get(served["base"], "/" + served["report"]["key"])[0] == 200  # the watch works
    finally:
        watch_opens(None)
    assert served["reads"] == [served["report"]["key"]], "a refused path reached the store"
    assert not [p for p in refused if "secret" in p or "passwd" in p or "win.ini" in p], refused
    if not store_uri.startswith("s3://"):
        assert served["store"].path(served["report"]["key"]) in opened[len(refused) :]


_watch: list[list[str] | None] = [None]


def watch_opens(into: list[str] | None) -> None:
    """Record the paths this process opens (every thread) into `into`; None stops. An audit hook
    cannot be removed, so one is installed once and switched."""
    if not getattr(watch_opens, "installed", False):

        def hook(event: str, args: tuple) -> None:
            if event == "open" and _watch[0] is not None:
                _watch[0].append(str(args[0]))

        sys.addaudithook(hook)
        watch_opens.installed = True
    _watch[0] = into


def test_a_symlink_out_of_a_local_store_is_not_followed(built, tmp_path):
    secret = tmp_path / "secret.html"
    secret.write_bytes(SECRET)
    store = Store(tmp_path / "store")
    store.write_bytes("reports/abc/index.html", b"<p>fine</p>")
    os.symlink(secret, Path(store.root) / "reports" / "abc" / "evil.html")
    server, base = start_report_server(store.uri, port=0, quiet=True)
    try:
        assert raw_get(base, "/reports/abc/index.html")[0] == 200
        status, _, body = raw_get(base, "/reports/abc/evil.html")
    finally:
        server.shutdown()
        server.server_close()
    assert status == 404 and SECRET not in body


def test_root_without_a_report_says_so(tmp_path):
    server, base = start_report_server(str(tmp_path / "empty"), port=0, quiet=True)
    try:
        status, head, body = raw_get(base, "/")
    finally:
        server.shutdown()
        server.server_close()
    assert status == 200 and b"No report yet" in body and head["content-type"].startswith("text/html")


# -- links ---------------------------------------------------------------------------------------------


def test_public_url(tmp_path, monkeypatch):
    local, s3 = Store(tmp_path / "store"), Store("s3://bucket/prefix")
    key = "reports/abc/index.html"
    monkeypatch.delenv(REPORT_URL_ENV, raising=False)
    assert public_url(local, key) == Path(local.root, key).as_uri()
    assert public_url(s3, key) == "s3://bucket/prefix/reports/abc/index.html"
    monkeypatch.setenv(REPORT_URL_ENV, "http://127.0.0.1:8765/")
    assert public_url(local, key) == public_url(s3, key) == "http://127.0.0.1:8765/reports/abc/index.html"
    assert public_url(local, "reports/a=b/x@y+1.png") == "http://127.0.0.1:8765/reports/a%3Db/x%40y%2B1.png"
    with pytest.raises(ValueError):
        public_url(local, "../etc/passwd")


def test_public_url_is_what_the_server_serves(tmp_path, monkeypatch):
    """Keys with characters that are quoted in a URL come back to the same key."""
    store = Store(tmp_path / "store")
    key = "reports/a=b,c/x@y+1.png"
    store.write_bytes(key, PNG_MAGIC + b"rest")
    server, base = start_report_server(store.uri, port=0, quiet=True)
    monkeypatch.setenv(REPORT_URL_ENV, base)
    try:
        with urllib.request.urlopen(public_url(store, key), timeout=10) as answer:
            assert answer.status == 200 and answer.read() == PNG_MAGIC + b"rest"
    finally:
        server.shutdown()
        server.server_close()


def test_summary_links_without_a_report_server(built, monkeypatch):
    monkeypatch.delenv(REPORT_URL_ENV, raising=False)
    report, store = built["report"], built["store"]
    md = summary_markdown(report, {"evaluations": {}}, built["doc"], store)
    assert f"[Open the report]({Path(report['url']).as_uri()})" in md
    assert "![" not in md, "a file:// image would not show in the UI"
    rows = [line for line in md.splitlines() if line.startswith("| ") and " – " in line]
    assert 0 < len(rows) <= 8 and f"`{FRONTIER_KEY}`" in md  # the first rows; the artifact has the rest
    first = report["summary"]["frontier"][0]
    assert rows[0].startswith(f"| {first['total_bits'] / 8e9:.3g} – ") and f"`{first['quant']}`" in rows[0]


# -- the command ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_serve_reports_command(built):
    proc = subprocess.Popen(
        [sys.executable, "-m", "kbitlaw", "serve-reports", "--store", built["store"].uri, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first, second = proc.stdout.readline(), proc.stdout.readline()
        base = re.search(r"at (http://127\.0\.0\.1:\d+)$", first.strip()).group(1)
        assert first.strip() == f"kbitlaw: serving the reports of {built['store'].uri} at {base}"
        assert second.strip() == f"for workers: export {REPORT_URL_ENV}={base}"
        assert raw_get(base, "/")[0] == 302
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err
    assert re.search(r'"GET / HTTP/1.0" 302', err), err  # one log line per request, on stderr


# -- in a real browser, over HTTP ------------------------------------------------------------------------


def chromium() -> str:
    from tests.test_report import ensure_chromium  # installs it with apt where it is missing (CI)

    return ensure_chromium()


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
    flags += ["--disable-background-networking", "--disable-component-update"]
    return subprocess.run(
        [chromium(), *flags, f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_the_summary_links_open_in_chromium(built, tmp_path, monkeypatch):
    """The summary markdown exactly as the artifact has it; its report link opened by Chromium over
    HTTP shows the fit's recommendation; its figures load as PNG."""
    server, base = start_report_server(built["store"].uri, port=0, quiet=True)
    monkeypatch.setenv(REPORT_URL_ENV, base)
    try:
        md = summary_markdown(built["report"], {"evaluations": {"computed": 1}}, built["doc"], built["store"])
        link = re.search(r"\[Open the report\]\(([^)]+)\)", md).group(1)
        assert link == f"{base}/{built['report']['key']}"
        dom = run_chromium(tmp_path, "--dump-dom", link)
        shot = tmp_path / "report_http.png"
        taken = run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", link)
        images = re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", md)
        answers = []
        for _, url in images:
            with urllib.request.urlopen(url, timeout=10) as answer:
                answers.append((answer.status, answer.headers["Content-Type"], answer.read(8)))
    finally:
        server.shutdown()
        server.server_close()
    quant, bits = built["doc"]["recommendation"]["quant"], built["doc"]["recommendation"]["bits"]
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f"Deploy at {bits}-bit: <code>{quant}</code>" in dom.stdout, dom.stdout[:2000]
    assert f"**Recommended precision: `{quant}` ({bits}-bit)**" in md
    assert taken.returncode == 0 and shot.read_bytes().startswith(PNG_MAGIC)
    assert [title for title, _ in images] == [
        "Accuracy versus total model bits",
        "Data types at 3 and 4 bits",
    ]
    assert all(url.startswith(base + "/reports/") and url.endswith(".png") for _, url in images)
    assert answers == [(200, "image/png", PNG_MAGIC)] * len(images)
