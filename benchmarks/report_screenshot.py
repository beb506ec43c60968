"""Screenshot of a tiny CPU run's report.html, as headless Chromium shows it at 1400x1000.

    python benchmarks/report_screenshot.py [--data ../shared/data] [--out benchmarks/results]

Runs `python -m cramming budget=40steps arch=tiny impl.threads=1 train.microbatch_size=auto data=local ...`
on the tiny corpus, then `python -m cramming.glue` on SST-2 and MRPC (a few hundred examples, two seeds),
and writes report_tiny_cpu.png (the first screen), report_tiny_cpu_full.png (the whole page)
and report_tiny_cpu.html (the page itself) into --out. Needs a Chromium binary
(`apt-get install -y --no-install-recommends chromium`). The numbers in it are a tiny model's
on a CPU: they show what the page holds, not what a real run reaches.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]


def run(args: list[str], cwd: Path) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=cwd, check=True)


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    sys.exit("no Chromium found: apt-get install -y --no-install-recommends chromium")


def page_height(chrome: str, url: str) -> int:
    """The document's height in CSS pixels at 1400 wide (the page's own script writes it to data-height)."""
    dom = subprocess.run([chrome, *FLAGS, "--window-size=1400,1000", "--dump-dom", url],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    found = re.search(r'data-height="(\d+)"', dom)
    return int(found.group(1)) if found else 6000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    chrome = browser()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = args.data / "corpus" / "tiny"
        run(["-m", "cramming", "budget=40steps", "arch=tiny", "impl.threads=1", "impl.kernels=torch", "data=local",
             f"data.files=[{corpus / 'train.txt'}]", f"data.validation_files=[{corpus / 'valid.txt'}]",
             "data.vocab_size=2048", "train.log_every=4", "train.microbatch_size=auto", "name=tiny-cpu",
             f"base_dir={tmp}"], tmp)  # fmt: skip
        run(["-m", "cramming.glue", f"model={tmp / 'tiny-cpu' / 'model'}", f"glue_dir={args.data / 'glue'}",
             "tasks=[sst2,mrpc]", "seeds=3", "epochs=2", "max_train_examples=400", "max_eval_examples=200",
             "max_test_examples=16", "impl.threads=1", "impl.kernels=torch"], tmp)  # fmt: skip
        page = tmp / "tiny-cpu" / "report.html"
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copy(page, args.out / "report_tiny_cpu.html")
        url = page.as_uri()
        height = page_height(chrome, url)
        for name, size in (
            ("report_tiny_cpu.png", "1400,1000"),
            ("report_tiny_cpu_full.png", f"1400,{height}"),
        ):
            subprocess.run([chrome, *FLAGS, f"--window-size={size}", f"--screenshot={args.out / name}", url],
                           check=True, capture_output=True)  # fmt: skip
            print("wrote", args.out / name)


if __name__ == "__main__":
    main()
