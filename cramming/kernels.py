"""The fused Triton kernels, imported as ``cramming.kernels``; each has a plain PyTorch reference.

The kernels' source files live in the repository's top-level ``kernels/`` folder, which on purpose
has no ``__init__.py``: a regular package there would shadow an installed package of the same name
(Hugging Face's ``kernels``, which transformers imports) whenever the repository root is on
``sys.path`` (``python -m pytest`` or a notebook started in the root). A folder without
``__init__.py`` only ever becomes a namespace package, and Python prefers any regular package.

This module is the package's ``__init__``: setting ``__path__`` makes ``cramming.kernels.<name>``
resolve inside that folder in a checkout or editable install, or inside ``cramming/kernels/``, where
a wheel installs the same files (``package-dir`` in pyproject.toml).

Names resolve lazily, so ``import cramming.kernels`` never imports Triton: the references (``*_ref``)
work on machines without it.
"""

import importlib
from pathlib import Path


def _source_dirs() -> list[str]:
    here = Path(__file__).resolve().parent
    candidates = (here / "kernels", here.parent / "kernels")  # wheel install, then checkout
    found = [str(d) for d in candidates if (d / "flash_attention.py").is_file()]
    if not found:
        raise ImportError(f"cramming.kernels: no kernel sources in {[str(d) for d in candidates]}")
    return found[:1]


__path__ = _source_dirs()

_EXPORTS = {
    # name: module (module names differ from function names, so a submodule import
    # never shadows the function of the same name on the package)
    "layer_norm": "norm",
    "layer_norm_residual": "norm",
    "LayerNorm": "norm",
    "gelu": "activations",
    "bias_gelu": "activations",
    "geglu": "activations",
    "GELU": "activations",
    "BiasGELU": "activations",
    "GeGLU": "activations",
    "attention": "flash_attention",
    "Attention": "flash_attention",
    "attention_varlen": "flash_attention",
    # plain PyTorch references (no Triton import)
    "layer_norm_ref": "norm_ref",
    "layer_norm_residual_ref": "norm_ref",
    "gelu_ref": "activations_ref",
    "bias_gelu_ref": "activations_ref",
    "geglu_ref": "activations_ref",
    "attention_ref": "flash_attention_ref",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cramming.kernels' has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    return getattr(module, name)
