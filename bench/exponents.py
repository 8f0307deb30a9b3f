"""Benchmark: which exponent width E gives a k-bit float the smallest error (round-to-nearest, B=64).

    .venv/bin/python bench/exponents.py [--n 1048576] [--block 64]

Relative MSE ||w - q||^2 / ||w||^2 of fp<k>e<E>-b<B> for k = 3..8 and every E = 1..k-1, on Gaussian
and Student-t (nu = 4) weights (2^20 values each, fixed seeds), with int<k>-b<B> and nf<k>-b<B> for
reference. `*` marks the best E per k and distribution. spec.default_exponent_bits is set from this
table (by Student-t where the two disagree: LLM weights are heavy-tailed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kbitlaw.quant.fake import fake_quantize  # noqa: E402
from kbitlaw.quant.spec import default_exponent_bits  # noqa: E402

WIDTHS = range(3, 9)


def weights(kind: str, n: int) -> torch.Tensor:
    """Seeded weights: standard normal, or Student-t with 4 degrees of freedom (z / sqrt(chi2_4 / 4))."""
    gen = torch.Generator().manual_seed(0 if kind == "gaussian" else 1)
    z = torch.randn(n, generator=gen)
    if kind == "gaussian":
        return z
    chi2 = torch.randn(4, n, generator=gen).pow(2).sum(0)
    return z / (chi2 / 4).sqrt()


def rel_mse(w: torch.Tensor, spec: str) -> float:
    q = fake_quantize(w, spec)
    return float((w - q).double().pow(2).sum() / w.double().pow(2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1 << 20)
    parser.add_argument("--block", type=int, default=64, help="block size; 0 = one scale per tensor")
    args = parser.parse_args()
    dists = {"gaussian": weights("gaussian", args.n), "student-t4": weights("student-t", args.n)}
    b = args.block
    blocks = f"-b{b}" if b else ""
    print(
        f"relative MSE, {args.n} values per distribution, B={b or 'per tensor'}, fp16 absmax scales, "
        f"torch {torch.__version__}"
    )
    print()
    print("| k | dist | " + " | ".join(f"e{e}" for e in range(1, 8)) + " | best e | default e | int | nf |")
    print("|---:|---|" + "---:|" * 7 + "---:|---:|---:|---:|")
    for k in WIDTHS:
        for name, w in dists.items():
            errors = {e: rel_mse(w, f"fp{k}e{e}{blocks}") for e in range(1, k)}
            best = min(errors, key=errors.get)
            cells = [
                (f"**{errors[e]:.3e}**" if e == best else f"{errors[e]:.3e}") if e in errors else ""
                for e in range(1, 8)
            ]
            int_err, nf_err = rel_mse(w, f"int{k}{blocks}"), rel_mse(w, f"nf{k}{blocks}")
            row = [
                str(k),
                name,
                *cells,
                str(best),
                str(default_exponent_bits(k)),
                f"{int_err:.3e}",
                f"{nf_err:.3e}",
            ]
            print("| " + " | ".join(row) + " |")
    print()
    print("Bold: the smallest error for that k and distribution.")


if __name__ == "__main__":
    main()
