"""Quantization: the spec grammar and bit accounting (spec.py, no torch), codebooks and fake
quantization of tensors and models (torch, imported on first use)."""

from __future__ import annotations

from typing import Any

from kbitlaw.quant.spec import GRIDS, QuantSpec, resolve_grid

__all__ = ["GRIDS", "QuantSpec", "resolve_grid", "fake_quantize", "quantize_model", "restore"]


def __getattr__(name: str) -> Any:  # torch is imported only by what needs it
    if name in ("fake_quantize", "quantize_model", "restore"):
        from kbitlaw.quant import fake

        return getattr(fake, name)
    raise AttributeError(f"module 'kbitlaw.quant' has no attribute {name!r}")
