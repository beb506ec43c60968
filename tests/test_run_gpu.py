"""benchmarks/run_gpu.sh, the one prepared GPU check: its plan (a dry run on CPU), its report, and its
offline install on a stand-in for the GPU machine's image (tests/test_run_gpu_install.py)."""

import json
import re
import subprocess
import sys
import tarfile
import time
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


def plan(stdout: str) -> dict[str, int]:
    """{step: cap seconds} in the order the dry run lists them."""
    found = re.findall(r"^  (\S+)\s+<=\s*(\d+)s", stdout, flags=re.M)
    return {name: int(cap) for name, cap in found}


def test_dry_run_plans_the_priorities_within_the_deadline():
    """Catches a syntax error in the script, a file it names that does not exist, caps that add up past
    the 480-s deadline (they once added to ~905 s), the headline compiled Triton run or the attention
    benchmark placed behind the eager runs, and a setting whose overrides do not match its name."""
    result = dry_run()
    assert result.returncode == 0, result.stderr
    steps = plan(result.stdout)
    total = int(re.search(r"sum of caps: (\d+) s of the 480-s deadline", result.stdout).group(1))
    assert total == sum(steps.values()) <= 480
    order = list(steps)
    assert order[:3] == ["install", "gpu_info", "kernel_tests"] and steps["kernel_tests"] <= 30
    assert (
        order.index("train_compile_triton")
        < order.index("train_compile_torch")
        < order.index("bench_attention")
    )
    assert (
        order.index("bench_attention") < order.index("train_eager_triton") < order.index("bench_layer_norm")
    )
    assert order.index("bench_gelu") < order.index("slow_tests") and order[-1] == "pack"
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    for name in ("eager_torch", "eager_triton", "compile_torch", "compile_triton", "compile_triton_acc4"):
        line = lines[f"train_{name}"]
        compile_, kernels = name.split("_")[:2]
        assert f"impl.compile={'true' if compile_ == 'compile' else 'false'}" in line
        assert (
            f"impl.kernels={kernels}" in line
            and "arch=crammed-bert" in line
            and "impl.precision=bf16" in line
        )
        assert "train.log_every=1" in line and "seed=0" in line  # per-step losses, the same data
    assert "train.batch_size=512" in lines["train_compile_triton_acc4"]  # 4 microbatches of 128
    assert "test_torch_compile_forward_and_backward or test_autotuned_kernels_on_gpu" in lines["slow_tests"]
    assert "--bert-only" in lines["bench_attention"]
    assert all("--as-used" in lines[b] for b in ("bench_layer_norm", "bench_gelu"))


def test_bad_arguments_are_refused():
    bad = dry_run("--fast")
    assert bad.returncode == 2 and "unknown argument '--fast'" in bad.stderr


def write_run(folder: Path, records: list[dict], summary: dict | None) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"kind": "train", **r}) + "\n" for r in records))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))


def test_summary_leaves_out_the_compile_window_and_tolerates_missing_fields(tmp_path):
    """Catches the first log windows (compilation, autotuning) dragging down steady-state tokens/s and MFU,
    a crash when data_wait or summary.json (a run cut by its timeout) is missing, and settings out of order."""
    first = {"step": 1, "tokens_per_s": 10.0, "mfu": 0.01, "mem_gb": 30.0, "data_wait": 0.9}
    steady = [{"step": s, "tokens_per_s": t, "mfu": m, "mem_gb": 40.0} for s, t, m in
              [(25, 1000.0, 0.40), (50, 1200.0, 0.44), (75, 1100.0, 0.42)]]  # fmt: skip
    kernels = {"layer_norm": "triton", "gelu": "triton", "attention": "triton"}
    write_run(tmp_path / "runs" / "compile_triton", [first, *steady],
              {"compile_s": 61.5, "compiled": True, "kernels": kernels})  # fmt: skip
    waited = [dict(r, data_wait=0.02) for r in steady]
    write_run(tmp_path / "runs" / "eager_torch", [first, *waited], None)
    (tmp_path / "train_compile_triton.txt").write_text(
        "V1205 Recompiling function forward in model.py\nGraph break in user code at ops.py:53\n"
    )
    (tmp_path / "steps.tsv").write_text(
        "step\tstatus\tseconds\tcap\ntrain_compile_triton\ttimed out\t90\t90\n"
    )
    result = run_gpu_report.summarize(tmp_path)
    eager, compiled = result["runs"]
    assert (eager["setting"], compiled["setting"]) == ("eager_torch", "compile_triton")
    assert compiled["tokens_per_s"] == 1100.0 and compiled["mfu"] == pytest.approx(0.42)
    assert compiled["data_wait"] is None and eager["data_wait"] == pytest.approx(0.02)
    assert (
        compiled["peak_mem_gb"] == 40.0 and compiled["first_step_s"] == 61.5 and eager["first_step_s"] is None
    )
    write_run(tmp_path / "runs" / "eager_triton", [dict(first, tokens=16384), *steady], None)
    assert run_gpu_report.run_row(tmp_path / "runs" / "eager_triton")["first_step_s"] == pytest.approx(1638.4)
    assert compiled["kernels"] == kernels  # what ran, from the run's own summary.json
    assert (compiled["graph_breaks_logged"], compiled["recompiles_logged"]) == (1, 1)
    assert eager["graph_breaks_logged"] is None
    table = (tmp_path / "summary.md").read_text()
    assert "| compile_triton | 1 | 75 | 1,100 | 42.0% | n/a | 40.0 | 61.5 | True | 1 | 1 |" in table
    assert "| train_compile_triton | timed out | 90 | 90 |" in table


def test_summary_sets_losses_side_by_side_and_reads_the_checks(tmp_path):
    """Catches per-step losses of the eager and compiled runs (same seed) not lined up by step, a missing
    gap figure, and the env/dynamo/errors checks or benchmark JSON left out of summary.json/summary.md."""
    for setting, shift in (("eager_torch", 0.0), ("compile_torch", 0.001)):
        records = [{"step": s, "loss": 10.0 - s / 100 + shift, "tokens_per_s": 1.0} for s in range(1, 121)]
        write_run(tmp_path / "runs" / setting, records, None)
    (tmp_path / "env.json").write_text(json.dumps({"gpu": "NVIDIA H100 PCIe", "peak_bf16_tflops": 756.0,
        "kernels": {"triton/compile": {"error": "RuntimeError: impl.kernels=triton: the attention kernel failed"}}}))  # fmt: skip
    (tmp_path / "dynamo.json").write_text(
        json.dumps({"auto": {"graphs": 1, "graph_breaks": 0, "break_reasons": []}})
    )
    (tmp_path / "errors.json").write_text(
        json.dumps({"triton": {"geglu": {"fwd": {"max_abs": 0.01, "rel_rms": 0.002}}}})
    )
    (tmp_path / "bench").mkdir()
    rows = [
        {"provider": p, "mode": "fwd", "T": 128, "ms": ms} for p, ms in (("triton", 0.5), ("sdpa_flash", 0.4))
    ]
    (tmp_path / "bench" / "attention_h100_pcie.json").write_text(json.dumps({"rows": rows}))
    result = run_gpu_report.summarize(tmp_path)
    losses = result["losses"]
    assert losses["step"] == list(range(1, 101)) and len(losses["compile_torch"]) == 100
    assert losses["eager_torch"][9] == pytest.approx(9.9)
    assert result["loss_gaps"]["eager_torch vs compile_torch"] == pytest.approx(0.001)
    assert (tmp_path / "losses.tsv").read_text().splitlines()[0] == "step\teager_torch\tcompile_torch"
    md = (tmp_path / "summary.md").read_text()
    assert "NVIDIA H100 PCIe" in md and "the attention kernel failed" in md
    assert "| auto | 1 | 0 |" in md and "geglu | triton | fwd 2.00e-03" in md
    assert "| case | triton | sdpa_flash |" in md and "0.400" in md


def test_synthetic_corpus_is_reproducible_and_in_the_local_format(tmp_path):
    """Catches an unseeded corpus (the four settings and reruns would see different data) and one
    without document breaks (the local reader would see a single document)."""
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    run_gpu_report.write_corpus(a, 0.05)
    run_gpu_report.write_corpus(b, 0.05)
    assert a.read_bytes() == b.read_bytes() and a.stat().st_size >= 0.05 * 2**20
    documents = a.read_text().split("\n\n")
    assert len(documents) > 3 and all(doc.strip() for doc in documents[:-1])


def test_planned_training_runs_are_valid_configs(tmp_path):
    """Catches an override the config does not know or refuses (a renamed key, a bad value): on the GPU
    machine it would fail each training run after its start-up, minutes of the one device call."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from cramming.config import CONF_PATH, validate_run

    lines = [line for line in dry_run().stdout.splitlines() if line.startswith("  train_")]
    assert len(lines) == 5
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "train.txt").write_text("a few words.\n")  # the corpus step writes it there
    for line in lines:
        overrides = line.split(" -m cramming ", 1)[1].split()
        overrides = [re.sub(r"/tmp/[^/\]]+", str(tmp_path), o) for o in overrides]  # the script's work folder
        with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
            cfg = compose("pretrain", overrides=overrides)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        validate_run(resolved)
        assert resolved["train"]["log_every"] == 1 and resolved["seed"] == 0
        micro, final = resolved["train"]["microbatch_size"], resolved["train"]["batch_size"]
        assert final // micro == (4 if "acc4" in line else 1)


def test_a_run_keeps_its_deadline_and_packs_at_most_8_files(tmp_path):
    """Catches steps that run past the deadline (each is cut to what is left, later ones skipped), a run
    whose results are not packed (the device tool brings back at most 8 files, 2 folders down), and a
    summary missing a step. Every command is a stand-in that takes 2 s (training) or nothing; the
    report is the real one."""
    shim = tmp_path / "bin" / "python3"
    shim.parent.mkdir()
    shim.write_text(
        "#!/usr/bin/env bash\n"
        f'[ "$1 $2" = "benchmarks/run_gpu_report.py summary" ] && exec {sys.executable} "$@"\n'
        '[ "$1 $2" = "-m cramming" ] && sleep 2\n'
        "exit 0\n"
    )
    shim.chmod(0o755)
    out = tmp_path / "out"
    env = {
        "PATH": f"{shim.parent}:/usr/bin:/bin",
        "PYTHON": str(shim),
        "OUT": str(out),
        "RUN_GPU_DEADLINE": "12",
        "CRAMMING_GPU_WHEELS": str(tmp_path / "bin"),  # no wheels there
    }
    started = time.monotonic()
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - started < 12 + 20  # the deadline, plus packing
    assert sorted(p.name for p in out.iterdir()) == [
        "results.tar.gz",
        "run_gpu.log",
        "summary.json",
        "summary.md",
    ]
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
        steps = tar.extractfile("./steps.tsv").read().decode()
    assert "./summary.md" in names and "./train_compile_triton.txt" in names
    assert "train_compile_triton\tok" in steps and "skipped (deadline)" in steps, steps
    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]][:3] == ["gpu_info", "kernel_tests", "env_check"]
    assert "install: 0 wheels" in (out / "run_gpu.log").read_text()
