"""Peak memory of preparation does not grow with corpus size (streaming, sharded writes).

Each size runs in a fresh subprocess (ru_maxrss is a per-process high-water mark). The WordPiece
encoder is swapped for a byte-level stand-in so ~100 MB fit in a few seconds on 2 cores: what is
measured is the streaming machinery around it (reading, filters and dedup index, packing, shard
writing). The real tokenizer's share is one bounded batch; benchmarks/bench_data.py --twice checks the
whole pipeline with it on the real corpus.
"""

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    import numpy as np
    import cramming.data.prepare as prep

    mb, out = float(sys.argv[1]), Path(sys.argv[2])
    rng = np.random.default_rng(0)
    words = np.array("the of and a to in is was for on as with by he that at from his it an were".split())
    pool = ["\\n".join(" ".join(rng.choice(words, 120)) for _ in range(6)) for _ in range(64)]

    path, written, i = out / "synthetic.txt", 0, 0
    with open(path, "w") as f:  # generated lazily, document by document
        while written < mb * 1e6:
            doc = f"document {i}\\n{pool[i % len(pool)]}\\n\\n"  # unique first line: no duplicates
            f.write(doc)
            written, i = written + len(doc), i + 1

    def byte_tokens(tok, docs):  # stand-in encoder: one token per byte
        arrays = [np.frombuffer(d.encode(), np.uint8) for d in docs]
        offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])])
        return (np.concatenate(arrays).astype(np.int32) % 995) + 5, offsets

    prep.encode_documents = byte_tokens
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cfg = dict(files=[str(path)], vocab_size=1000, seq_len=128, cache_dir=str(out / "cache"),
               tokenizer=dict(sample_mb=0.3), shard_sequences=20000,
               filters=dict(max_tokens_per_char=None, min_doc_chars=0, dedup=True))
    corpus = prep.prepare_corpus(cfg, log=None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"start_mb": start / 1024, "peak_mb": peak / 1024, "tokens": corpus.stats["tokens"],
                      "documents": corpus.stats["documents"], "shards": len(corpus.train.shards)}))
    """
)


def run_child(mb: float, tmp_path) -> dict:
    out = tmp_path / f"run{mb}"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(mb), str(out)], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_rss_does_not_grow_with_corpus_size(tmp_path):
    small = run_child(10, tmp_path)
    large = run_child(100, tmp_path)
    assert large["tokens"] > 9 * small["tokens"] and large["shards"] > 20
    growth = large["peak_mb"] - small["peak_mb"]
    assert growth < max(40.0, 0.1 * small["peak_mb"]), (small, large)
