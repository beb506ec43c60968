"""MFU helpers (cramming.perf): the FLOP formula against torch's FLOP counter, the peak, the MFU meter."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from cramming import perf
from cramming.conf import read_yaml
from cramming.kernels import dispatch
from cramming.models import build_mlm, count_parameters

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = read_yaml("arch", "tiny.yaml")


@pytest.mark.parametrize("sparse", [True, False])
def test_flops_per_token_matches_torchs_flop_counter(sparse):
    """The formula against FlopCounterMode on a real forward+backward of the tiny model.

    The counter counts matmuls (attention's too, on the math SDPA path, which runs as bmm). It
    matches the formula exactly once the one known difference is removed: 6·N also counts the
    LayerNorm weights/biases and the position scale, which do no matmul (0.4% here). Softmax,
    LayerNorm, GELU and the loss are in neither. Catches a wrong attention term, a decoder counted
    on every token under sparse prediction (or at the masked share without it), a missing 3x for backward.
    """
    arch, vocab, batch, seq_len, p = {**TINY, "sparse_prediction": sparse}, 512, 2, 32, 0.25
    dispatch.configure({"kernels": "torch", "ops": {}})
    torch.manual_seed(0)
    model = build_mlm(arch, vocab)
    ids = torch.randint(5, vocab, (batch, seq_len))
    labels = torch.full_like(ids, -100)
    labels[:, : int(seq_len * p)] = ids[:, : int(seq_len * p)]  # exactly the masked share p
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(ids, labels)["loss"].backward()
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert counts["aten.bmm"] > 0  # attention was seen
    n_params = count_parameters(model)
    no_matmul = sum(p.numel() for name, p in model.named_parameters() if p.ndim < 2)
    scale = int(arch["position_embedding"] == "scaled-sinusoidal")  # rotary has no parameter
    assert (
        no_matmul == 2 * 128 * (1 + 2 * arch["num_layers"] + 1) + scale
    )  # norms (embedding, 2/layer, final)
    tokens = batch * seq_len
    formula = perf.flops_per_token(arch, n_params, seq_len, p, vocab) * tokens
    assert counter.get_total_flops() == pytest.approx(formula - 6 * no_matmul * tokens, rel=1e-9)
    assert counter.get_total_flops() == pytest.approx(formula, rel=0.01)


def test_mfu_is_a_fraction_of_peak():
    """Catches an MFU in percent instead of a fraction, or a silent division by a zero peak."""
    assert perf.mfu(1000.0, 1e6, 1e10) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="peak_flops"):
        perf.mfu(1000.0, 1e6, 0.0)


def test_matmul_peak_counts_2n3_flops_over_the_fastest_repeat(monkeypatch):
    """With a fake clock the peak is exact: catches n³ for 2·n³, the mean instead of the best run."""
    ticks = iter([0.0, 0.5, 10.0, 10.25, 20.0, 21.0])  # three repeats: 0.5 s, 0.25 s, 1 s
    monkeypatch.setattr(perf.time, "perf_counter", lambda: next(ticks))
    peak = perf.measure_matmul_peak(torch.float32, "cpu", threads=1, size=64, repeats=3)
    assert peak == 2 * 64**3 / 0.25
    with pytest.raises(ValueError, match="repeats"):
        perf.measure_matmul_peak(torch.float32, "cpu", size=8, repeats=0)


def test_measured_peak_agrees_with_a_matmul_timed_here():
    """The real clock: the measured peak is within a factor 4 of FLOPs/time of the same matmul timed by
    this test. Both take the best of many short repeats, interleaved, so a busy machine slows both
    alike. Catches a unit or FLOP-count slip (n³ for 2·n³, ms for s)."""
    import time

    size, a = 256, torch.randn(256, 256)
    b, best, peak = torch.randn(256, 256), float("inf"), 0.0
    torch.mm(a, b)
    for _ in range(5):
        for _ in range(10):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
        threads = torch.get_num_threads()
        peak = max(
            peak, perf.measure_matmul_peak(torch.float32, "cpu", threads=threads, size=size, repeats=10)
        )
    here = 2 * size**3 / best
    assert here / 4 < peak < here * 4


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


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H200", 989e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200 NVL", 835e12),
    ],
)
def test_a_listed_gpu_uses_its_published_bf16_peak(monkeypatch, name, peak):
    """Catches a table lookup that misses a listed GPU's full device name (it would be measured)."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(perf, "measure_matmul_peak", lambda *a, **k: pytest.fail("measured a listed GPU"))
    assert perf.device_peak_flops("cuda", "bf16") == peak


def test_an_unlisted_gpu_or_other_precision_falls_back_to_a_measured_matmul(monkeypatch):
    """As documented: the table holds bf16 peaks of listed GPUs only; anything else is measured."""
    monkeypatch.setattr(perf, "measure_matmul_peak", lambda dtype, device, threads: 4.2e13)
    monkeypatch.setattr(perf, "_peak_cache", {})
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce GTX 1080")
    assert perf.table_peak_flops("cuda") is None
    assert perf.device_peak_flops("cuda", "bf16") == 4.2e13
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert perf.device_peak_flops("cuda", "fp32") == 4.2e13  # the 989 TFLOP/s is a bf16 figure
    assert perf.table_peak_flops("cpu") is None
    with pytest.raises(ValueError, match="precision 'fp8'"):
        perf.device_peak_flops("cpu", "fp8")


def test_mfu_meter_refreshes_the_cpu_peak_rarely_and_keeps_the_best(monkeypatch):
    """Catches re-measuring at every log line (~0.5 s of budget each) and a worse peak replacing a better one."""
    now, measured = [100.0], iter([5e10, 7e10, 3e10])
    monkeypatch.setattr(perf.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(perf, "measure_matmul_peak", lambda dtype, device, threads: next(measured))
    monkeypatch.setattr(perf, "_peak_cache", {})
    meter = perf.MFUMeter(1e6, torch.device("cpu"), torch.float32)
    assert meter(1000.0) == pytest.approx(1000.0 * 1e6 / 5e10)
    now[0] += perf.PEAK_REFRESH_SECONDS - 1
    meter.refresh_if_due()
    assert meter.peak == 5e10  # not due yet: no measurement
    now[0] += 1
    meter.refresh_if_due()
    assert meter.peak == 7e10
    now[0] += perf.PEAK_REFRESH_SECONDS
    meter.refresh_if_due()
    assert meter.peak == 7e10 and meter(1000.0) == pytest.approx(1000.0 * 1e6 / 7e10)  # 3e10 was worse


def _run_bench(*args, cwd=REPO_ROOT):
    env = {
        k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"
    }  # real CPU path, not the interpreter
    cmd = [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_step.py"), "--device", "cpu", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_bench_step_rejects_unknown_arch(tmp_path):
    proc = _run_bench("--smoke", "--arch", "nope", "--out", str(tmp_path))
    assert proc.returncode != 0
    assert "unknown arch 'nope'" in proc.stderr and "crammed-bert" in proc.stderr
