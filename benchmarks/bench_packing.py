"""How full RoBERTa's FULL-SENTENCES blocks are at data.seq_len 128 and 512 (recipe=roberta's data settings).

    python benchmarks/bench_packing.py [--files GLOB ...] [--sample-mb 8] [--seq-lens 128 512]

Prepares the corpus (default: the first Wikipedia shard of ../shared/data/corpus) with recipe=roberta's
data config (byte-level BPE, ``data.packing=full-sentences``) once per sequence length, sharing one
tokenizer, and reports per length: blocks, the share of block positions holding text (the rest is
``<pad>``: compute spent on nothing), the mean text tokens per block, and the text tokens of one
optimizer step at the recipe's 8192-sequence batch. Writes ``benchmarks/results/packing_roberta.json``
and ``.md``. CPU only, deterministic: no timings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("CRAMMING_SHARED_DATA", REPO.parent / "shared" / "data")) / "corpus"
BATCH = 8192  # recipe=roberta's sequences per optimizer step


def roberta_data_config(files: list[str], seq_len: int, sample_mb: float, cache: str) -> dict:
    """recipe=roberta's data group (conf/recipe/roberta.yaml over conf/data/local.yaml) on local files."""
    from omegaconf import OmegaConf

    from cramming.conf import read_yaml

    recipe = OmegaConf.load(REPO / "conf" / "recipe" / "roberta.yaml")
    data = OmegaConf.merge(read_yaml("data", "local.yaml"), recipe.data)
    data = OmegaConf.to_container(data, resolve=True)
    data.update(files=files, cache_dir=cache, num_workers=1, seq_len=seq_len)
    data["tokenizer"]["sample_mb"] = sample_mb
    return data


def block_stats(corpus) -> dict:
    ids, pad, sep = corpus.train[:], corpus.special_ids["pad"], corpus.special_ids["sep"]
    blocks, seq_len = ids.shape
    text = int((ids[:, 1:] != pad).sum())  # positions after <s> holding a token (</s> included)
    fill = text / (blocks * seq_len)
    return {
        "seq_len": seq_len,
        "blocks": int(blocks),
        "text_tokens": text,
        "separators": int((ids == sep).sum()),
        "fill": round(fill, 4),
        "padding": round(1 - fill - 1 / seq_len, 4),  # <s> is the rest
        "text_tokens_per_block": round(text / blocks, 1),
        "text_tokens_per_step": int(round(BATCH * seq_len * fill)),
        "vocab_size": corpus.tokenizer.get_vocab_size(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", nargs="+", default=[str(CORPUS / "wikipedia_en" / "train-00.txt.gz")])
    parser.add_argument("--sample-mb", type=float, default=8.0)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    from cramming.data import prepare_corpus

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for seq_len in args.seq_lens:
            cfg = roberta_data_config(args.files, seq_len, args.sample_mb, cache)
            rows.append(block_stats(prepare_corpus(cfg, log=print)))
    files = [Path(f).name for f in args.files]
    result = {"command": " ".join(["python benchmarks/bench_packing.py", *sys.argv[1:]]), "files": files}
    result["rows"] = rows
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "packing_roberta.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# recipe=roberta FULL-SENTENCES blocks on {', '.join(files)}",
        "",
        f"`{result['command']}`",
        "",
        "| seq_len | blocks | text share | padding | text tokens / block | text tokens / 8192-block step |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['seq_len']} | {r['blocks']} | {r['fill']:.1%} | {r['padding']:.1%} | "
        f"{r['text_tokens_per_block']} | {r['text_tokens_per_step']:,} |"
        for r in rows
    ]
    (args.out / "packing_roberta.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if np.isfinite([r["fill"] for r in rows]).all() else 1


if __name__ == "__main__":
    sys.exit(main())
