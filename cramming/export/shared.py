"""What both transformers exports (native.py, remote.py) write besides the weights."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from tokenizers import Tokenizer

from cramming.data.tokenizer import is_bpe
from cramming.export.folder import FRAMING
from cramming.files import atomic_write


def framing_of(config: Mapping, tokenizer: Tokenizer) -> dict:
    """The export's ``cramming_pretraining`` block, or what can still be said for an export without it."""
    if config.get(FRAMING):
        return dict(config[FRAMING])
    normalizer = json.loads(tokenizer.to_str()).get("normalizer")
    return {
        "recorded": False,
        "tokenizer_kind": "bpe" if is_bpe(tokenizer) else "wordpiece",
        "normalizer": normalizer,
    }


def write_json_files(out_dir: Path, files: Mapping[str, Mapping]) -> None:
    """Each ``name -> content`` as indented JSON in ``out_dir``, written atomically."""
    for name, content in files.items():
        text = json.dumps(content, indent=2) + "\n"
        atomic_write(out_dir / name, lambda tmp, text=text: Path(tmp).write_text(text))
