"""cramming: pretrain a BERT-style masked language model on one GPU within a wall-clock budget."""

__version__ = "0.1.0"


def load_model(path, device="cpu"):
    """Load an exported model folder (model.safetensors, config.json, tokenizer.json) with strict keys."""
    from cramming.export import load_model as _load

    return _load(path, device=device)
