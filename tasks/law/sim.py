"""Synthetic results from known law parameters: for tests that must recover them and benchmarks.

The default world is a Pythia-like family: a Chinchilla-style 16-bit loss in (N, D), quantization
damage dL = C * D^beta / (N^alpha * k^gamma) scaled by the data type, block size and outlier
share, and zero-shot accuracy that is a sigmoid of the loss. Every piece can be replaced by a
callable, so a test can make the data follow exactly the law it checks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from kbitlaw.quant.spec import QuantSpec
from kbitlaw.vocab import (
    ACC,
    ACC_NORM,
    BITS_PER_BYTE,
    BYTE_PERPLEXITY,
    LOSS,
    PERPLEXITY,
    RESULT_COLUMNS,
    WORD_PERPLEXITY,
)

EMBEDDING_SHARE = 0.15  # parameters that stay 16-bit (embeddings, LM head)


@dataclass(frozen=True)
class Dataset:
    name: str
    kind: str  # multiple_choice | cloze | perplexity
    chance: float = 0.25
    n_examples: int = 1000


@dataclass(frozen=True)
class World:
    """The default ground truth (numbers in the range the papers report)."""

    E: float = 1.9
    A: float = 420.0
    alpha: float = 0.32
    B: float = 410.0
    beta: float = 0.28
    damage_c: float = 0.017
    damage_alpha: float = 0.23
    damage_beta: float = 0.52
    damage_gamma: float = 5.5
    acc_max: float = 0.9
    acc_mid_loss: float = 3.2  # loss at which accuracy is halfway between chance and acc_max
    acc_width: float = 0.35
    loss_noise: float = 0.002  # relative, per evaluation
    # Relative, per checkpoint: its own deviation from the law (training noise: seed, data order),
    # shared by every spec and dataset of those weights and NOT in any stderr, as in real families.
    model_noise: float = 0.0

    def loss16(self, n: np.ndarray, d: np.ndarray) -> np.ndarray:
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def damage(self, n: np.ndarray, d: np.ndarray, spec: QuantSpec) -> np.ndarray:
        if spec.bits >= 16:
            return np.zeros_like(n * d)
        kind = {"nf": 0.8, "quantile": 0.75, "fp": 0.85, "int": 1.1, "dynamic": 1.15}.get(spec.dtype, 1.0)
        block = 1.0 + 0.25 * np.log2((spec.block_size or 4096) / 64)
        outlier = 1.0 / (1.0 + spec.outlier_pct)
        k = spec.bits
        return (
            kind
            * block
            * outlier
            * self.damage_c
            * d**self.damage_beta
            / (n**self.damage_alpha * k**self.damage_gamma)
        )

    def accuracy(self, loss: np.ndarray, dataset: Dataset) -> np.ndarray:
        top = self.acc_max - dataset.chance
        return dataset.chance + top / (1.0 + np.exp(-(self.acc_mid_loss - loss) / self.acc_width))


DEFAULT_DATASETS = (
    Dataset("hellaswag", "multiple_choice", 0.25, 1000),
    Dataset("piqa", "multiple_choice", 0.5, 1000),
    Dataset("lambada", "cloze", 0.0, 1000),
    Dataset("pile_cc", "perplexity"),
)

LossFn = Callable[[np.ndarray, np.ndarray, QuantSpec, np.ndarray], np.ndarray]  # (N, D, spec, S) -> loss
AccFn = Callable[[np.ndarray, Dataset, np.ndarray], np.ndarray]  # (loss, dataset, S) -> P(correct)


def simulate_results(
    sizes: Sequence[float],
    tokens: Sequence[float],
    specs: Sequence[str],
    datasets: Sequence[Dataset] = DEFAULT_DATASETS,
    *,
    world: World = World(),
    loss_fn: LossFn | None = None,
    acc_fn: AccFn | None = None,
    seed: int = 0,
    family: str = "sim",
    embedding_share: float = EMBEDDING_SHARE,
) -> pl.DataFrame:
    """Result rows (the full results schema) for every size x tokens checkpoint x spec x dataset.

    `embedding_share` of each model's parameters stays 16-bit (embeddings, LM head): at a memory
    budget B a model of n params at spec s has n = B / ((1 - share) * bits_per_param(s) + share * 16).
    Loss and accuracy rows carry their evaluation noise as stderr (loss: relative loss_noise); a
    checkpoint's training noise (`World.model_noise`) moves its loss in every row and no stderr."""
    rng = np.random.default_rng(seed)
    parsed = [QuantSpec.parse(q) for q in specs]
    n, d = (
        a.ravel() for a in np.meshgrid(np.asarray(sizes, float), np.asarray(tokens, float), indexing="ij")
    )
    step = np.tile(np.arange(1, len(tokens) + 1) * 1000, len(sizes))
    base_noise = rng.standard_normal(len(n))  # the 16-bit model's own evaluation noise is shared
    # drawn only when asked for, so worlds without it keep their random streams
    model_effect = np.exp(world.model_noise * rng.standard_normal(len(n))) if world.model_noise else 1.0
    frames = []
    for spec in parsed:
        n_q = n * (1 - embedding_share)
        total = n_q * spec.bits_per_param + (n - n_q) * 16.0
        loss = (loss_fn or (lambda n_, d_, s_, _: world.loss16(n_, d_) + world.damage(n_, d_, s_)))(
            n, d, spec, total
        ) * model_effect
        for ds in datasets:
            noise = base_noise if spec.bits >= 16 else rng.standard_normal(len(n))
            observed = loss * np.exp(world.loss_noise * noise)
            if ds.kind == "perplexity":
                metrics = {
                    LOSS: observed,
                    WORD_PERPLEXITY: np.exp(observed * 1.3),
                    BYTE_PERPLEXITY: np.exp(observed / 4),
                    BITS_PER_BYTE: observed / 4 / np.log(2),
                }
                stderr = observed * world.loss_noise  # the evaluation noise, known here
            else:
                p = np.clip((acc_fn or (lambda l_, ds_, _: world.accuracy(l_, ds_)))(loss, ds, total), 0, 1)
                acc = rng.binomial(ds.n_examples, p) / ds.n_examples
                metrics = {ACC: acc}
                metrics[ACC_NORM if ds.kind == "multiple_choice" else PERPLEXITY] = (
                    np.clip(acc + 0.01, 0, 1) if ds.kind == "multiple_choice" else np.exp(observed)
                )
                stderr = np.sqrt(acc * (1 - acc) / ds.n_examples)
            for metric, value in metrics.items():
                frames.append(
                    pl.DataFrame(
                        {
                            "checkpoint_id": [
                                f"{family}/n{int(a)}/step-{s}" for a, s in zip(n, step, strict=True)
                            ],
                            "n_params": n.astype(np.int64),
                            "tokens_seen": d,
                            "step": step.astype(np.int64),
                            "n_params_quantized": n_q.astype(np.int64),
                            "total_bits": total,
                            "value": value,
                            "stderr": stderr if metric in (ACC, LOSS) else np.full(len(n), np.nan),
                            "n_examples": np.full(len(n), ds.n_examples, dtype=np.int64),
                        }
                    ).with_columns(
                        family=pl.lit(family),
                        quant=pl.lit(spec.quant),
                        dtype=pl.lit(spec.dtype),
                        bits=pl.lit(spec.bits, dtype=pl.Int64),
                        block_size=pl.lit(spec.block_size, dtype=pl.Int64),
                        outlier_pct=pl.lit(spec.outlier_pct),
                        bits_per_param=pl.lit(spec.bits_per_param),
                        dataset=pl.lit(ds.name),
                        dataset_sha=pl.lit(f"sha-{ds.name}"),
                        kind=pl.lit(ds.kind),
                        metric=pl.lit(metric),
                        seconds=pl.lit(1.0),
                        device=pl.lit("cpu"),
                        kbitlaw_version=pl.lit("sim"),
                        created_at=pl.lit("2024-01-01T00:00:00Z"),
                    )
                )
    out = pl.concat(frames)
    return out.with_columns(checkpoint_uri=pl.lit("sim://") + pl.col("checkpoint_id")).select(RESULT_COLUMNS)


# -- truths with a known best precision ------------------------------------------------------------


def bits_cost(k: int, block: int | None = 64, embedding_share: float = EMBEDDING_SHARE) -> float:
    """Memory per parameter of a model whose linears are k-bit with fp16 block scales and whose
    embeddings stay 16-bit: at a budget B a model has B / bits_cost params."""
    b = 16.0 if k >= 16 else k + (16.0 / block if block else 0.0)
    return (1 - embedding_share) * b + embedding_share * 16.0


def peaked_quality(best: int, margin: float = 0.08, **cost: float) -> dict[int, float]:
    """q(k) for k = 2..8 and 16: a k-bit model of n params behaves like a 16-bit model of n*q(k)
    params. Quality per bit of memory, q(k) / bits_cost(k), peaks at `best` and falls by `margin`
    for each bit away from it, so at every budget the best width is `best`. q rises with k (more
    bits never hurt one model) and q(16) = 1."""
    eff = {k: (1 - margin) ** abs(k - best) for k in range(2, 9)}
    raw = {k: eff[k] * bits_cost(k, **cost) for k in eff}
    top = raw[8] / 0.98  # 8-bit keeps 98% of the 16-bit model
    q = {k: v / top for k, v in raw.items()}
    q[16] = 1.0
    return q


def effective_size_loss(q: dict[int, float], world: World = World()) -> LossFn:
    """Losses of the 16-bit law at the effective size n * q(k) (damage expressed as lost size)."""

    def loss(n: np.ndarray, d: np.ndarray, spec: QuantSpec, _total: np.ndarray) -> np.ndarray:
        return world.loss16(n * q[spec.bits if spec.bits <= 8 else 16], d)

    return loss
