"""cramming: pretrain a BERT-style masked language model on one GPU within a wall-clock budget."""

import os

# Idle OpenMP threads sleep instead of spin-waiting. On a CPU shared with other jobs, spinning
# threads steal the cores the busy ones need (a short tiny pretraining run was faster with PASSIVE
# on this project's shared 2-core machine; that measurement was not stored). The OpenMP runtime reads
# this once, when torch loads it, so it is set here, before any module of the package imports torch;
# every entry point (python -m cramming, cramming.glue, .finetune, .predict, the benchmarks) imports
# this first.
# A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cramming.version import __version__ as __version__  # noqa: E402  (after the OpenMP setting above)


def load_model(path, device="cpu"):
    """Load an exported model folder (model.safetensors, config.json, tokenizer.json) with strict keys."""
    from cramming.export.folder import load_model as _load

    return _load(path, device=device)
