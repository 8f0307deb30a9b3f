"""Reports over HTTP: links a browser opens from the Prefect UI, and a small read-only server for them.

A browser will not follow a file:// link from an http page, and s3:// is no browser scheme at all,
so a report stored locally or on S3 cannot be opened from the UI directly. `kbitlaw serve-reports`
(also started by `kbitlaw serve`) serves the report pages, their figures and the dataset validation
pages straight from the store; with $KBITLAW_REPORT_URL set to its address, public_url() links there.

The server shows only reports/ and datasets/validation/ (HTML, PNG, JSON, CSS): never checkpoints,
results or anything else in the store. A request path must be a valid store key (store.validate_key)
under those prefixes, so '..', absolute paths, backslashes and control characters are refused
before the store is touched.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import threading
import urllib.parse
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePosixPath

from kbitlaw.store import LATEST_REPORT, REPORTS, VALIDATION, Store, StoreError, validate_key

REPORT_URL_ENV = "KBITLAW_REPORT_URL"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765

# What may be served, the layout's own prefixes (so that a change of layout cannot silently widen
# it): "reports/" and "datasets/validation/".
SERVED_PREFIXES = (f"{REPORTS}/", f"{VALIDATION}/")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".png": "image/png",
    ".json": "application/json",
    ".css": "text/css; charset=utf-8",
}


def clickable(url: str) -> str:
    """Local absolute paths as file:// URIs (so a UI renders a link); s3:// and http(s) stay as they are."""
    return PurePosixPath(url).as_uri() if url.startswith("/") else url


def public_url(store: Store, key: str) -> str:
    """Where a person opens `key`: under $KBITLAW_REPORT_URL when set (the report server), else
    the store's own URL (a file:// URI or s3://). Raises ValueError for an invalid key."""
    base = os.environ.get(REPORT_URL_ENV, "").strip()
    if base:
        return base.rstrip("/") + "/" + urllib.parse.quote(validate_key(key))
    return clickable(store.url(key))


def served_key(key: str) -> bool:
    """Whether the server may show this (already validated) key."""
    return key.startswith(SERVED_PREFIXES) and PurePosixPath(key).suffix in CONTENT_TYPES


class ReportServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer over one store; bound (and listening) once constructed."""

    daemon_threads = True  # a hung client never keeps the process alive

    def __init__(
        self, store: Store, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, quiet: bool = False
    ) -> None:
        self.store, self.quiet = store, quiet
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), ReportHandler)

    @property
    def base_url(self) -> str:
        """The URL to give to browsers and workers (the real port when port 0 was asked for)."""
        host, port = self.server_address[:2]
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()  # listening everywhere: a browser elsewhere needs a real name
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"


class ReportHandler(BaseHTTPRequestHandler):
    server: ReportServer
    server_version = "kbitlaw-reports"

    def version_string(self) -> str:
        return self.server_version  # no Python version in the Server header

    def do_GET(self) -> None:
        self.respond(body=True)

    def do_HEAD(self) -> None:
        self.respond(body=False)

    def respond(self, body: bool) -> None:
        raw = self.path.split("?", 1)[0].split("#", 1)[0]
        if not raw.startswith("/"):  # absolute-form ("http://host/...") or garbage
            return self.send_text(HTTPStatus.BAD_REQUEST, "bad request path", body)
        key = urllib.parse.unquote(raw[1:])  # once: a "%2e" left over is refused by validate_key
        if key == "":
            return self.newest(body)
        try:
            validate_key(key)  # no '..', '.', empty part, backslash, NUL, absolute path or odd character
        except ValueError:
            return self.send_text(HTTPStatus.BAD_REQUEST, "bad request path", body)
        if not served_key(key) or not self.inside_store(key):
            return self.send_text(HTTPStatus.NOT_FOUND, "not found", body)
        try:
            data = self.server.store.read_bytes(key)
        except FileNotFoundError:
            return self.send_text(HTTPStatus.NOT_FOUND, "not found", body)
        except (StoreError, OSError) as exc:
            self.log_message("store error: %s", " ".join(str(exc).split()))
            return self.send_text(HTTPStatus.BAD_GATEWAY, "the store could not be read", body)
        self.send_bytes(HTTPStatus.OK, data, CONTENT_TYPES[PurePosixPath(key).suffix], body)

    def inside_store(self, key: str) -> bool:
        """A local store's file must really be inside the store: a symlink there may point anywhere."""
        store = self.server.store
        if store.protocol != "file":
            return True
        return os.path.realpath(store.path(key)).startswith(store.root.rstrip("/") + "/")

    def newest(self, body: bool) -> None:
        """'/': a redirect to the newest report, or a one-line page saying there is none yet.
        (The pointer is read here rather than with report.build.latest_report: build imports
        matplotlib, a second of start-up for a server that draws nothing.)"""
        try:
            pointer = self.server.store.read_json(LATEST_REPORT)
            target = "/" + urllib.parse.quote(validate_key(pointer["report"]))
        except FileNotFoundError:
            return self.send_text(
                HTTPStatus.OK, "No report yet: run `kbitlaw nightly` or `kbitlaw report`.", body
            )
        except (StoreError, OSError, ValueError, KeyError, TypeError) as exc:
            self.log_message("latest report unreadable: %s", " ".join(str(exc).split()))
            return self.send_text(HTTPStatus.BAD_GATEWAY, "the newest report could not be found", body)
        self.send_response(HTTPStatus.FOUND)
        self.send_header("Location", target)
        self.send_header("Cache-Control", "no-cache")  # the newest report changes every night
        self.send_header("Content-Length", "0")
        self.end_headers()

    def send_text(self, status: HTTPStatus, text: str, body: bool) -> None:
        page = f"<!doctype html><title>kbitlaw reports</title><p>{text}</p>\n".encode()
        self.send_bytes(status, page, CONTENT_TYPES[".html"], body)

    def send_bytes(self, status: HTTPStatus, data: bytes, content_type: str, body: bool) -> None:
        # no-cache everywhere: reports/latest.json changes with every report, and a report can be
        # rebuilt under the same key (`kbitlaw report --force`, a new fit of the same results).
        # Browsers revalidate; the ETag makes an unchanged object a cheap 304.
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"' if status == HTTPStatus.OK else None
        unchanged = etag is not None and self.headers.get("If-None-Match") == etag
        self.send_response(HTTPStatus.NOT_MODIFIED if unchanged else status)
        if not unchanged:  # a 304 has no body, so no length or type of one
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        if etag:
            self.send_header("ETag", etag)
        self.end_headers()
        if body and not unchanged:
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        # One line per request on stderr; request paths are escaped (no control characters reach
        # the terminal) and headers, where credentials would be, are never logged.
        if not self.server.quiet:
            line = (format % args).encode("unicode_escape").decode("ascii")
            sys.stderr.write(f"{self.address_string()} [{self.log_date_time_string()}] {line}\n")


def start_report_server(
    store_uri: str | None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, quiet: bool = False
) -> tuple[ReportServer, str]:
    """Serve the store's reports from a daemon thread; returns (server, base_url). Port 0 takes
    any free port (base_url names it). Stop with server.shutdown(); server.server_close()."""
    server = ReportServer(Store(store_uri), host, port, quiet)
    threading.Thread(target=server.serve_forever, name="kbitlaw-reports", daemon=True).start()
    return server, server.base_url


def serve_reports_forever(
    store_uri: str | None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    ready: Callable[[ReportServer], None] | None = None,
) -> None:
    """Serve the store's reports in the foreground until interrupted (Ctrl-C ends it quietly);
    `ready(server)` is called once it listens."""
    with ReportServer(Store(store_uri), host, port) as server:
        if ready:
            ready(server)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
