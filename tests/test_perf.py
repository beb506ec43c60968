"""MFU helpers (cramming.perf), the FLOP formula, and benchmarks/bench_step.py's smoke mode."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cramming import perf
from cramming.model import build_mlm, count_parameters, flops_per_token

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "hand",
    "hidden_size": 8,
    "num_layers": 2,
    "num_heads": 2,
    "intermediate_size": 16,
    "ffn": "glu",
    "activation": "gelu",
    "norm_position": "pre",
    "norm_eps": 1e-12,
    "norm_bias": True,
    "linear_bias": False,
    "embedding_norm": True,
    "final_norm": True,
    "position_embedding": "scaled-sinusoidal",
    "max_position_embeddings": 16,
    "type_vocab_size": 0,
    "prediction_head": False,
    "tie_embeddings": True,
    "sparse_prediction": True,
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "init_std": 0.02,
}


def test_flops_per_token_hand_computed():
    H, L, V, T = 8, 2, 10, 16
    # embeddings 10*8 + scale 1 + norm 16; per block: 2 norms 32, qkv 192, out 64, ffn 8*16 + 8*8;
    # final norm 16; decoder tied to the embedding.
    n = 80 + 1 + 16 + L * (32 + 192 + 64 + 128 + 64) + 16
    assert n == 1073
    model = build_mlm(TINY, V)
    assert count_parameters(model) == n
    # Sparse prediction: the decoder matmul (80 weights) runs on a quarter of the tokens.
    dense = n - 80 + 80 * 0.25
    expected = 6 * dense + 12 * L * H * T
    assert flops_per_token(TINY, n, T, 0.25, V) == pytest.approx(expected) == 6 * 1013 + 3072
    assert perf.model_flops_per_token(model, TINY, T, 0.25, V) == pytest.approx(expected)
    full = {**TINY, "sparse_prediction": False}
    assert flops_per_token(full, n, T, 0.25, V) == pytest.approx(6 * n + 12 * L * H * T)


def test_mfu_is_a_fraction_of_peak():
    assert perf.mfu(1000.0, 1e6, 1e10) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="peak_flops"):
        perf.mfu(1000.0, 1e6, 0.0)


def test_measured_matmul_peak_is_plausible():
    peak = perf.measure_matmul_peak(torch.float32, "cpu", threads=1, size=128, repeats=2)
    assert math.isfinite(peak) and 1e7 < peak < 1e13  # between 10 MFLOP/s and 10 TFLOP/s on one core
    both = perf.matmul_peaks(torch.float32, "cpu", threads=1, size=128, repeats=2)
    assert set(both) == {"wall", "cpu"} and 1e7 < both["cpu"] < 1e13
    with pytest.raises(ValueError, match="repeats"):
        perf.measure_matmul_peak(torch.float32, "cpu", size=8, repeats=0)


def test_device_peak_is_cached_and_refresh_keeps_the_best(monkeypatch):
    values = iter([5e10, 3e10, 7e10])
    calls = []

    def fake(dtype, device, threads, *args):
        calls.append((dtype, threads))
        return next(values)

    monkeypatch.setattr(perf, "measure_matmul_peak", fake)
    monkeypatch.setattr(perf, "_peak_cache", {})
    assert perf.device_peak_flops("cpu", "fp32", threads=2) == 5e10
    assert perf.device_peak_flops("cpu", "fp32", threads=2) == 5e10  # cached, no new measurement
    assert perf.device_peak_flops("cpu", "fp32", threads=2, refresh=True) == 5e10  # 3e10 is worse
    assert perf.device_peak_flops("cpu", "fp32", threads=2, refresh=True) == 7e10
    assert calls == [(torch.float32, 2)] * 3


def test_gpu_peak_comes_from_the_table(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert perf.device_peak_flops("cuda", "bf16") == 989e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA RTX A6000")
    assert perf.table_peak_flops("cuda") == 155e12
    assert perf.table_peak_flops("cpu") is None
    with pytest.raises(ValueError, match="precision 'fp8'"):
        perf.device_peak_flops("cpu", "fp8")


def _run_bench(*args, cwd=REPO_ROOT):
    env = {
        k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"
    }  # real CPU path, not the interpreter
    cmd = [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_step.py"), "--device", "cpu", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_bench_step_smoke_writes_valid_json(tmp_path):
    proc = _run_bench("--smoke", "--kernels", "torch", "--vocab-size", "512", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "step_tiny_cpu_smoke.json").read_text())
    assert result["arch"] == "tiny" and result["smoke"] is True and result["precision"] == "fp32"
    assert result["steps"] == 2 and len(result["step_s_all"]) == 2
    assert result["tokens_per_step"] == 2 * 32
    assert result["tokens_per_s"] == pytest.approx(64 / result["step_s_median"])
    assert result["peak_gflops"] == pytest.approx(max(result["peak_gflops_all"]))
    expected_mfu = result["tokens_per_s"] * result["model_flops_per_token"] / (result["peak_gflops"] * 1e9)
    assert result["mfu"] == pytest.approx(expected_mfu) and 0 < result["mfu"]
    assert 0 < result["mfu_cpu_clock"] and result["omp_wait_policy"]
    assert math.isfinite(result["final_loss"]) and result["step_cpu_s_median"] > 0
    arch = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "arch" / "tiny.yaml"))
    n = count_parameters(build_mlm(arch, 512))
    assert result["parameters"] == n
    assert result["model_flops_per_token"] == pytest.approx(flops_per_token(arch, n, 32, 0.25, 512))


def test_bench_step_rejects_unknown_arch(tmp_path):
    proc = _run_bench("--smoke", "--arch", "nope", "--out", str(tmp_path))
    assert proc.returncode != 0
    assert "unknown arch 'nope'" in proc.stderr and "crammed-bert" in proc.stderr
