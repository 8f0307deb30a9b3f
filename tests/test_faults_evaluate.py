"""Faults on the `kbitlaw evaluate --data FILE` path: a huge row, malformed rows, broken files.

Each bad input ends in one stderr line naming the file (and row or line) and the cause, or, when
the row can simply be dropped, in the quarantine counts; nothing is tokenized beyond the window.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import polars as pl
import pytest

from kbitlaw.checkpoint_loading import load_tokenizer
from kbitlaw.data.files import read_dataset_file
from kbitlaw.eval.encoding import chars_per_token, encode
from kbitlaw.eval.engine import EvaluationError, prepare
from tests.conftest import corpus_sentences
from tests.test_evaluate import WINDOW, mc_rows

pytestmark = pytest.mark.slow  # subprocess commands on 50 MB inputs

# Runs a command and reports its peak RSS (KB) on a last stderr line, for this command alone.
PEAK = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print('peak_rss_kb=%d' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
    "sys.exit(rc)"
)


def evaluate_cli(*args: str) -> tuple[subprocess.CompletedProcess, list[str], int]:
    """(process, its stderr lines without the peak line, peak RSS in KB) of `kbitlaw evaluate ARGS`."""
    out = subprocess.run(
        [sys.executable, "-c", PEAK, sys.executable, "-m", "kbitlaw", "evaluate", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = out.stderr.splitlines()
    peak = int(lines[-1].removeprefix("peak_rss_kb="))
    return out, lines[:-1], peak


def jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_50_mb_row_is_quarantined_fast_and_small(trained_checkpoint, tmp_path):
    rows = mc_rows(5, 3)
    huge = dict(rows[1], id="huge", context="the cat sat on the mat. " * 2_100_000)  # 50 MB
    assert len(huge["context"]) > 50_000_000
    twin = dict(rows[0], id="twin")  # the same question again under another id
    data = jsonl(tmp_path / "mc.jsonl", [*rows, twin, huge])
    plain = jsonl(tmp_path / "plain.jsonl", rows)
    started = time.perf_counter()
    reference, _, reference_kb = evaluate_cli(str(trained_checkpoint), "--data", plain, "--json")
    reference_s = time.perf_counter() - started
    started = time.perf_counter()
    out, stderr, peak_kb = evaluate_cli(str(trained_checkpoint), "--data", data, "--json")
    seconds = time.perf_counter() - started
    assert reference.returncode == 0 and out.returncode == 0, out.stderr
    print(f"50 MB row: {seconds:.1f} s, peak RSS {peak_kb / 1024:.0f} MB; without it {reference_s:.1f} s")
    # Against the same command without the huge row, on the same machine a moment before: reading
    # and dropping 50 MB costs less than a second run of everything else, and stays out of memory.
    assert seconds < 2 * reference_s + 5, (seconds, reference_s)
    assert peak_kb < reference_kb + 1024 * 1024
    results = json.loads(out.stdout)["results"]
    assert {r["n_examples"] for r in results} == {5}  # the duplicate scored once, the huge row not at all
    counts = [line for line in stderr if "quarantined" in line]
    assert counts == [
        f"{data}: 7 rows, 5 clean, 2 quarantined (duplicate row: 1 (row 6), too long: 1 (row 7))"
    ]


def _csv_cell(choices) -> str:
    return '"' + json.dumps(choices).replace('"', '""') + '"'


@pytest.mark.parametrize(
    "case, message",
    [
        ("gold-text", "bad.jsonl: row id=2: field 'gold': 'two' is not an integer (row 3 of the file)"),
        ("gold-float", "bad.jsonl: row id=2: field 'gold': 1.5 is not an integer (row 3 of the file)"),
        ("choices-json", """bad.csv: row id=1: field 'choices': '["a", "b"' is not a JSON list of texts"""),
        ("csv-as-jsonl", "bad.jsonl: not JSON lines: line 1 is not JSON (Expecting value at column 1;"),
        ("truncated", "bad.jsonl: line 4: not valid JSON ("),
    ],
)
def test_bad_rows_and_files_give_one_line(case, message, trained_checkpoint, tmp_path):
    rows = mc_rows(4, 6)
    if case == "gold-text":
        rows[2]["gold"] = "two"
    if case == "gold-float":
        rows[2]["gold"] = 1.5
    if case in ("choices-json", "csv-as-jsonl"):
        path = tmp_path / ("bad.csv" if case == "choices-json" else "bad.jsonl")
        cells = [_csv_cell(r["choices"]) for r in rows]
        if case == "choices-json":
            cells[1] = '"[""a"", ""b"""'  # the closing bracket is missing
        lines = [f"{r['id']},{r['context']},{cell},{r['gold']}" for r, cell in zip(rows, cells, strict=True)]
        path.write_text("id,context,choices,gold\n" + "\n".join(lines) + "\n")
    else:
        path = tmp_path / "bad.jsonl"
        jsonl(path, rows)
    if case == "truncated":  # the last line cut short, as a crashed writer leaves it
        path.write_text(path.read_text()[:-20])
    out, stderr, _ = evaluate_cli(str(trained_checkpoint), "--data", str(path), "--json")
    assert out.returncode == 1 and out.stdout == ""
    assert len(stderr) == 1 and stderr[0].startswith("kbitlaw: error: "), out.stderr
    assert stderr[0].removeprefix("kbitlaw: error: ").removeprefix(str(tmp_path) + "/").startswith(message)


def test_csv_with_a_json_list_column_is_cleaned(tmp_path, caplog):
    rows = mc_rows(6, 2)
    rows[3]["context"] = "  " + rows[3]["context"].replace(" ", "\t ")  # normalised like the nightly
    lines = [f"{r['id']},{r['context']},{_csv_cell(r['choices'])},{r['gold']}" for r in rows]
    path = tmp_path / "mc.csv"
    path.write_text("id,context,choices,gold\n" + "\n".join(lines) + "\n")
    with caplog.at_level("INFO", logger="kbitlaw"):
        df, kind = read_dataset_file(str(path))
    assert kind == "multiple_choice" and df.height == 6
    assert df.schema["choices"] == pl.List(pl.String) and df["choices"].to_list() == [
        r["choices"] for r in rows
    ]
    assert df["context"][3] == mc_rows(6, 2)[3]["context"]
    assert caplog.messages == [f"{path}: 6 rows, 6 clean, 0 quarantined"]


def test_the_api_cleans_a_frame_as_the_cli_does(trained_checkpoint, caplog):
    import kbitlaw

    rows = mc_rows(6, 1)
    rows.append(dict(rows[2], id="again"))
    rows.append(dict(rows[0], id="long", context="x" * 60))
    with caplog.at_level("INFO", logger="kbitlaw"):
        results = kbitlaw.evaluate(str(trained_checkpoint), pl.DataFrame(rows), dataset="toy", max_chars=50)
    assert set(results["n_examples"]) == {6}
    assert (
        "toy: 8 rows, 6 clean, 2 quarantined (duplicate row: 1 (row 7), too long: 1 (row 8))"
        in caplog.messages
    )
    bad = [*mc_rows(3, 1), {"id": "9", "context": "c", "choices": ["a", "b"], "gold": None}]
    with pytest.raises(EvaluationError, match=r"^toy: row id=9: field 'gold' is missing or null \(row 4"):
        kbitlaw.evaluate(str(trained_checkpoint), pl.DataFrame(bad), dataset="toy")


class CountingTokenizer:
    """A tokenizer that records the length of every text it is asked to encode."""

    def __init__(self, inner):
        self.inner, self.lengths = inner, []

    def __call__(self, text, **kwargs):
        self.lengths.append(len(text))
        return self.inner(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_the_engine_never_tokenizes_more_than_the_window_needs(trained_checkpoint):
    tokenizer = load_tokenizer(str(trained_checkpoint))
    per_token = chars_per_token(tokenizer)
    budget = 2 * (WINDOW + 1) * per_token
    long_context = " ".join(corpus_sentences(40_000, 7))  # ~1.2 MB, far past the window
    rows = [
        {"id": "long", "context": long_context, "choices": ["the mat.", "a tree.", "the box."], "gold": 0},
        {"id": "short", "context": "the cat sat on", "choices": ["the mat.", "a tree."], "gold": 0},
    ]
    counting = CountingTokenizer(tokenizer)
    prepared = prepare(pl.DataFrame(rows), "multiple_choice", counting, WINDOW)
    assert max(counting.lengths) <= budget + len(" the mat.")
    assert counting.lengths.count(budget) == 1  # the long context is tokenized once, not per choice
    assert prepared.truncated == 1
    # The kept tokens are exactly those of the whole context, left-truncated (lm-eval's result).
    tail = long_context[-20 * budget :]
    whole = encode(tokenizer, tail + " the mat.")
    ctx = encode(tokenizer, tail)
    cont = whole[len(ctx) :]
    request = prepared.requests[0]
    assert request.continuations[0] == tuple(cont)
    assert request.context == tuple(ctx[-(WINDOW + 1 - len(cont)) :])


def test_a_continuation_longer_than_any_window_fails_before_tokenizing(trained_checkpoint):
    tokenizer = CountingTokenizer(load_tokenizer(str(trained_checkpoint)))
    rows = [{"id": "7", "context": "the cat", "choices": ["sat " * 5_000_000, "ran"], "gold": 1}]
    with pytest.raises(EvaluationError, match="x.jsonl: row id=7: a continuation of 20000001 characters"):
        prepare(pl.DataFrame(rows), "multiple_choice", tokenizer, WINDOW, name="x.jsonl")
    assert tokenizer.lengths == []
