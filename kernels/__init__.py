"""Fused Triton kernels for crammed-BERT, each with a plain PyTorch reference.

Names resolve lazily, so ``import cramming.kernels`` never imports Triton: the
references (``*_ref``) work on machines without it.
"""

import importlib

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
