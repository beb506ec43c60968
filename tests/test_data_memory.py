"""Peak memory of preparation does not grow with corpus size (streaming, sharded writes).

Each size runs in a fresh subprocess (ru_maxrss is a per-process high-water mark): the real pipeline,
with two encoding worker processes, on ~10 MB and ~100 MB of synthetic text generated lazily. The peak
of the main process and of the largest worker must stay flat.
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

    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cfg = dict(files=[str(path)], vocab_size=1000, seq_len=128, cache_dir=str(out / "cache"),
               tokenizer=dict(sample_mb=0.3), shard_sequences=8000, num_workers=2,
               filters=dict(max_tokens_per_char=None, min_doc_chars=0, dedup=True))
    corpus = prep.prepare_corpus(cfg, log=None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"start_mb": start / 1024, "peak_mb": peak / 1024, "worker_peak_mb": workers / 1024,
                      "tokens": corpus.stats["tokens"],
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
    for key in ("peak_mb", "worker_peak_mb"):
        growth = large[key] - small[key]
        assert growth < max(40.0, 0.1 * small[key]), (key, small, large)
