"""Calibration data for GPTQ: token ids [n_seq, seq_len] from a named dataset.

    ref = calibration_ref("text:128")                  # NAME[:N][:MODE]; its identity goes into result keys
    ids = calibration_tokens(ref, tokenizer, window)   # [128, min(window, 256)] token ids

NAME is a dataset spec (datasets/*.yaml, or the --dataset-specs directory); N sequences (default
128) of min(model window, MAX_SEQ_LEN) tokens. The texts are tokenized as the perplexity evaluation
tokenizes a document (the prefix token, then the text without special tokens), concatenated, and
cut into consecutive sequences; a sequence may run across documents.

Where they come from:
- a builtin source (`builtin:<generator>`, as the default `text`): the generator's TRAINING side
  (world.calibration_texts), so GPTQ sees the evaluation set's distribution but never its rows;
- any other source (a file, s3://, hf://): the dataset's clean rows, in an order shuffled with a
  fixed seed. Evaluating on that same dataset then scores GPTQ on the data it was calibrated on.

Why 128 x min(window, 256): GPTQ's Hessian H = 2 X Xᵀ / n needs many more tokens than the widest
layer has inputs (4 x hidden for the MLP's down projection) to be well conditioned; 128 sequences
of 256 tokens (32,768 tokens) is 8x the widest input of a model of hidden size 1,024 (the demo
family's largest: 16,384 tokens at its 128-token window, 32x its 512 inputs), and GPTQ then costs
about 17 evaluations of the `text` dataset on a ~10M model on a CPU (bench/gptq.py); the paper's
128 x 2048 tokens would cost 8x more, for little gain at these sizes. Ask for more with NAME:N.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from kbitlaw.eval.encoding import encode, prefix_token_id

if TYPE_CHECKING:  # torch only where tokens are made: the CLI checks a calibration without it
    import torch

DEFAULT_CALIBRATION = "text:128"
DEFAULT_SEQUENCES = 128
MAX_SEQ_LEN = 256
SEED = 0  # the order of a file dataset's rows; builtin streams are seeded by their dataset spec
CALIBRATION_VERSION = 1  # bump when the texts or the tokens a ref stands for change


MODES = ("sequential", "parallel")  # how GPTQ takes its Hessians: quant/gptq.py, gptq_quantize_model


def parse_calibration(text: str) -> tuple[str, int, str]:
    """`NAME[:N][:MODE]` -> (name, n, mode); ValueError naming the problem. MODE: sequential (default:
    each block calibrated on the quantized blocks before it) or parallel (every Hessian from the
    original model, one pass shared by every GPTQ spec of a checkpoint)."""
    parts = text.strip().split(":")
    mode = parts.pop() if len(parts) > 1 and parts[-1] in MODES else MODES[0]
    if len(parts) > 2 or not parts[0]:
        example = "e.g. text:128 or text:128:parallel"
        raise ValueError(f"calibration {text!r}: expected NAME[:N][:MODE], {example}")
    name, count = parts[0], parts[1] if len(parts) == 2 else ""
    if not count:
        return name, DEFAULT_SEQUENCES, mode
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"calibration {text!r}: N must be a positive number of sequences, got {count!r}")
    return name, int(count), mode


@dataclass(frozen=True)
class CalibrationRef:
    """Which calibration data, as tasks pass it around (JSON-able). `sha` identifies the source texts
    (builtin: generator and parameters; other sources: their bytes); `spec`, the dataset spec's
    fields, lets any worker rebuild the texts."""

    name: str
    n: int
    sha: str
    spec: dict[str, Any] = field(compare=False, repr=False)
    mode: str = MODES[0]

    def __str__(self) -> str:  # the results' `calibration` column
        return f"{self.name}:{self.n}" + ("" if self.mode == MODES[0] else f":{self.mode}")

    def identity(self) -> dict[str, Any]:
        """What the result key of a GPTQ evaluation records about its calibration data (the mode only
        when parallel: sequential results keep the keys they had before there were modes)."""
        rule = {"max_seq_len": MAX_SEQ_LEN, "seed": SEED, "version": CALIBRATION_VERSION}
        mode = {} if self.mode == MODES[0] else {"mode": self.mode}
        return {"name": self.name, "n": self.n, "sha": self.sha, **rule, **mode}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CalibrationRef:
        return cls(**d)


def _sha(doc: dict) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]


def _builtin(spec) -> tuple[str, int, int] | None:
    """(generator, seed, difficulty) of a builtin source, else None."""
    if not spec.source.startswith("builtin:"):
        return None
    params = {"seed": 0, "difficulty": 1, **spec.params}
    return spec.source.removeprefix("builtin:"), int(params["seed"]), int(params["difficulty"])


def calibration_ref(text: str = DEFAULT_CALIBRATION, dataset_specs: str | None = None) -> CalibrationRef:
    """Resolve `NAME[:N][:MODE]` against the dataset specs (see data.specs.dataset_spec_dir)."""
    from kbitlaw.data.prepare import select_dataset_specs
    from kbitlaw.data.specs import raw_input

    name, n, mode = parse_calibration(text)
    [spec] = select_dataset_specs([name], dataset_specs)
    builtin = _builtin(spec)
    if builtin is not None:
        from kbitlaw.data import world

        if builtin[0] not in world.FAMILIES:
            raise ValueError(f"calibration {name}: unknown builtin generator {builtin[0]!r}")
        sha = _sha({"generator": builtin[0], "seed": builtin[1], "difficulty": builtin[2], "side": "train"})
    else:
        _, input_sha = raw_input(spec)
        mapping = {k: getattr(spec, k) for k in ("kind", "adapter", "columns", "delimiter", "max_examples")}
        sha = _sha({"input": input_sha, **mapping})
    return CalibrationRef(name=name, n=n, sha=sha, spec=asdict(spec), mode=mode)


def calibration_texts(ref: CalibrationRef) -> Iterator[str]:
    """The calibration documents, in order (builtin: endless; otherwise the dataset's rows)."""
    from kbitlaw.data.cleaning import clean_frame
    from kbitlaw.data.specs import DatasetSpec, canonical, raw_input

    spec = DatasetSpec(**{**ref.spec, "expectations": tuple(ref.spec.get("expectations") or ())})
    builtin = _builtin(spec)
    if builtin is not None:
        from kbitlaw.data import world

        yield from world.calibration_texts(*builtin)
        return
    raw, _ = raw_input(spec)
    clean, _ = clean_frame(canonical(raw, spec), spec.kind, max_chars=spec.max_chars)
    rows = list(clean.iter_rows(named=True))
    random.Random(SEED).shuffle(rows)
    for row in rows:
        if spec.kind == "multiple_choice":
            yield f"{row['context']}{spec.delimiter}{row['choices'][row['gold']]}"
        else:
            yield row["text"]


def calibration_tokens(ref: CalibrationRef, tokenizer: Any, window: int) -> torch.Tensor:
    """[ref.n, min(window, MAX_SEQ_LEN)] token ids (int64, CPU), the same for the same ref,
    tokenizer and window. ValueError when a finite dataset has too few tokens."""
    seq_len = min(window, MAX_SEQ_LEN)
    need = ref.n * seq_len
    prefix = prefix_token_id(tokenizer)
    stream: list[int] = []
    for text in calibration_texts(ref):
        stream.append(prefix)  # one prefix token per text, whatever the tokenizer adds by default
        stream.extend(encode(tokenizer, text, special_tokens=False))
        if len(stream) >= need:
            break
    if len(stream) < need:
        most = len(stream) // seq_len
        raise ValueError(
            f"calibration {ref}: the dataset has {len(stream)} tokens, {ref.n} x {seq_len} are needed "
            f"(ask for at most {ref.name}:{most})"
        )
    import torch

    return torch.tensor(stream[:need], dtype=torch.int64).view(ref.n, seq_len)
