"""kbitlaw: k-bit inference scaling laws for your own checkpoints.

The public API (torch and the other heavy libraries load on first use, so `import kbitlaw` is cheap):

    QuantSpec, resolve_grid        quant spec strings and bit accounting ("nf4-b64", "int3-b64-o2")
    fake_quantize(tensor, spec)    one weight as the spec would store it
    quantize_(model, spec)         in place; restore(model) undoes it; `with quantized(model, spec):`
    load_checkpoint(uri)           a Hugging Face checkpoint (safetensors only, no remote code)
    evaluate(model_or_uri, data, specs) -> polars.DataFrame in the results schema
    fit_laws(results) -> dict      the fit document: recommendation, laws, claims, checks
    Store                          the content-addressed object store (local directory or s3://)

Stages, each a subpackage: quant/, eval/, data/, law/, report/, demo/; Prefect flows and the
command line are kbitlaw.flows, which the library never imports.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from kbitlaw.quant.spec import QuantSpec, resolve_grid
from kbitlaw.store import Store

try:
    __version__ = metadata.version("kbitlaw")
except metadata.PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "fake_quantize": "kbitlaw.api",
    "quantize_": "kbitlaw.api",
    "quantized": "kbitlaw.api",
    "restore": "kbitlaw.api",
    "load_checkpoint": "kbitlaw.api",
    "evaluate": "kbitlaw.api",
    "fit_laws": "kbitlaw.api",
}

__all__ = ["QuantSpec", "Store", "__version__", "resolve_grid", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kbitlaw' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
