"""benchmarks/run_gpu.sh, the one prepared GPU check: its plan (a dry run on CPU) and its report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "run_gpu.sh"
sys.path.insert(0, str(REPO / "benchmarks"))
import run_gpu_report  # noqa: E402


def dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, timeout=60
    )


def test_dry_run_plans_the_four_settings_within_the_device_limit():
    """Catches a syntax error in the script, a file it names that does not exist, a setting whose
    impl.compile/impl.kernels do not match its name, benchmark sweeps, and a deadline past 8 minutes."""
    result = dry_run()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "syntax ok; deadline 470 s" in lines[0]
    runs = {line.split()[0]: line for line in lines if line.strip().startswith("train_")}
    assert list(runs) == [
        "train_eager_torch",
        "train_eager_triton",
        "train_compile_torch",
        "train_compile_triton",
    ]
    for name, line in runs.items():
        compile_, kernels = name.split("_")[1:]
        assert f"impl.compile={'true' if compile_ == 'compile' else 'false'}" in line
        assert (
            f"impl.kernels={kernels}" in line
            and "arch=crammed-bert" in line
            and "impl.precision=bf16" in line
        )
    benches = [line for line in lines if "benchmarks/bench_" in line]
    assert len(benches) == 3 and all("--bert-only" in line for line in benches)
    assert any("test_kernels_attention.py" in line for line in lines)


def test_quick_variant_and_bad_arguments():
    """Catches --quick planning the full run (it must fit ~3.5 minutes) and an unknown flag being ignored."""
    quick = dry_run("--quick")
    assert quick.returncode == 0, quick.stderr
    assert "deadline 210 s" in quick.stdout
    assert [w.split()[0] for w in quick.stdout.splitlines() if w.strip().startswith("train_")] == [
        "train_eager_torch",
        "train_compile_triton",
    ]
    bad = dry_run("--fast")
    assert bad.returncode == 2 and "unknown argument '--fast'" in bad.stderr


def write_run(folder: Path, records: list[dict], summary: dict | None) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"kind": "train", **r}) + "\n" for r in records))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))


def test_summary_leaves_out_the_compile_window_and_tolerates_missing_fields(tmp_path):
    """Catches the first log window (compilation, warm-up) dragging down steady-state tokens/s and MFU,
    a crash when data_wait (logged only once prefetching exists) or summary.json (a run cut by its
    timeout) is missing, and settings listed out of order."""
    first = {"step": 1, "tokens_per_s": 10.0, "mfu": 0.01, "mem_gb": 30.0, "data_wait": 0.9}
    steady = [{"step": s, "tokens_per_s": t, "mfu": m, "mem_gb": 40.0} for s, t, m in
              [(25, 1000.0, 0.40), (50, 1200.0, 0.44), (75, 1100.0, 0.42)]]  # fmt: skip
    write_run(tmp_path / "runs" / "compile_triton", [first, *steady], {"compile_s": 61.5, "compiled": True})
    waited = [dict(r, data_wait=0.02) for r in steady]
    write_run(tmp_path / "runs" / "eager_torch", [first, *waited], None)
    (tmp_path / "steps.tsv").write_text("step\tstatus\tseconds\ntrain_compile_triton\ttimed out\t120\n")
    result = run_gpu_report.summarize(tmp_path)
    eager, compiled = result["runs"]
    assert (eager["setting"], compiled["setting"]) == ("eager_torch", "compile_triton")
    assert compiled["tokens_per_s"] == 1100.0 and compiled["mfu"] == pytest.approx(0.42)
    assert compiled["data_wait"] is None and eager["data_wait"] == pytest.approx(0.02)
    assert (
        compiled["peak_mem_gb"] == 40.0 and compiled["first_step_s"] == 61.5 and eager["first_step_s"] is None
    )
    table = (tmp_path / "summary.md").read_text()
    assert "| compile_triton | 75 | 1,100 | 42.0% | n/a | 40.0 | 61.5 | True |" in table
    assert "| train_compile_triton | timed out | 120 |" in table


def test_synthetic_corpus_is_reproducible_and_in_the_local_format(tmp_path):
    """Catches an unseeded corpus (the four settings and reruns would see different data) and one
    without document breaks (the local reader would see a single document)."""
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    run_gpu_report.write_corpus(a, 0.05)
    run_gpu_report.write_corpus(b, 0.05)
    assert a.read_bytes() == b.read_bytes() and a.stat().st_size >= 0.05 * 2**20
    documents = a.read_text().split("\n\n")
    assert len(documents) > 3 and all(doc.strip() for doc in documents[:-1])
