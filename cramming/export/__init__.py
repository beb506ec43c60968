"""Exports: what a run leaves for others to load.

    folder.py   cramming model folders (model.safetensors + config.json + tokenizer.json): save, read, load
    native.py   transformers-native BERT / RoBERTa folders for recipe=bert / roberta models (no remote code)
    remote.py   transformers folders with remote code (hf/): ``python -m cramming.export model=... out=...``
    shared.py   what both transformers exports write (the pretraining framing block, JSON files)
    hf/         the remote-code templates copied next to the weights

Import the module you need (``from cramming.export.folder import load_model``): this package loads nothing.
"""
