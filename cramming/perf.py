"""Model FLOPs utilisation (MFU): the peak a device can do and the share of it a run achieves.

On GPU the peak is the device's dense bf16 tensor-core rate from a table (a measured
large matmul where the device or precision is not in the table). On CPU there is no
useful table, so the peak is a large matmul measured with the same thread count the
run uses; the result is cached per (device, dtype, threads).

    peak = device_peak_flops(torch.device("cpu"), "fp32", threads=2)
    print(mfu(tokens_per_s, flops_per_token(arch, n_params, 128, 0.25, 32768), peak))
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch

from cramming.config.checks import PRECISIONS
from cramming.runtime import DTYPES

# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s, by device-name substring; first match wins, so
# the form factors come before the plain name: an H100 is 989 as SXM ("NVIDIA H100 80GB HBM3"), 835 as
# NVL and 756 as PCIe (NVIDIA's datasheets; the PCIe card's lower clocks and 114 SMs); the H200 NVL too.
GPU_BF16_PEAK_TFLOPS: dict[str, float] = {
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,  # SXM5 (HBM3) and GH200's H100
    "H200 NVL": 835.0,
    "H200": 989.0,  # SXM
    "A100": 312.0,  # SXM and PCIe alike
    "A6000": 155.0,
    "L40S": 362.0,
    "A10G": 125.0,
    "RTX 4090": 165.0,
}


def gpu_table_peak(name: str) -> tuple[str, float] | None:
    """(table key, dense bf16 TFLOP/s) for a CUDA device name, or None if it is not listed."""
    return next(((k, v) for k, v in GPU_BF16_PEAK_TFLOPS.items() if k in name), None)


_peak_cache: dict[tuple[str, str, int], float] = {}


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype of a concrete precision; ``auto`` depends on the device (``runtime.resolve_precision``)."""
    if precision not in DTYPES:
        raise ValueError(
            f"precision {precision!r} is not one of {list(DTYPES)} (of {list(PRECISIONS)}, 'auto' needs a device: "
            "resolve it with cramming.runtime.resolve_precision first)"
        )
    return DTYPES[precision]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peaks(
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    threads: int | None = None,
    size: int | None = None,
    repeats: int | None = None,
) -> dict[str, float | None]:
    """Best FLOP/s of several ``size``×``size`` matmuls (2·n³ FLOPs each) by two clocks.

    ``wall``: FLOPs per wall-clock second. ``cpu`` (CPU only): FLOPs per CPU-second of the
    process times ``threads``, i.e. the rate had the threads been alone on their cores;
    time spent descheduled on a shared machine does not count. The best run, not the mean,
    because noise only ever makes a run slower.
    """
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    size = (8192 if on_gpu else 2048) if size is None else size
    repeats = (20 if on_gpu else 5) if repeats is None else repeats
    if size < 1 or repeats < 1:
        raise ValueError(f"size={size} and repeats={repeats} must be positive")
    previous = torch.get_num_threads()
    if threads is not None and not on_gpu:
        torch.set_num_threads(threads)
    try:
        gen = torch.Generator(device).manual_seed(0)  # leaves the global RNG (and so training) untouched
        a = torch.randn(size, size, device=device, generator=gen).to(dtype)
        b = torch.randn(size, size, device=device, generator=gen).to(dtype)
        out = torch.mm(a, b)  # warm-up: allocations, BLAS thread pool
        _sync(device)
        best_wall = best_cpu = float("inf")
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            torch.mm(a, b, out=out)
            _sync(device)
            best_wall = min(best_wall, time.perf_counter() - start)
            best_cpu = min(best_cpu, time.process_time() - cpu_start)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
    flops = 2.0 * size**3
    cpu = None if on_gpu or best_cpu <= 0 else flops / best_cpu * used_threads
    return {"wall": flops / best_wall, "cpu": cpu}


def measure_matmul_peak(
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    threads: int | None = None,
    size: int | None = None,
    repeats: int | None = None,
) -> float:
    """Best wall-clock FLOP/s of several large matmuls with ``threads`` CPU threads (see ``matmul_peaks``)."""
    return matmul_peaks(dtype, device, threads, size, repeats)["wall"]


def table_peak_flops(device: torch.device | str) -> float | None:
    """The dense bf16 peak (FLOP/s) of a CUDA device from the table, or None if it is not listed."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    found = gpu_table_peak(torch.cuda.get_device_name(device))
    return None if found is None else found[1] * 1e12


def device_peak_flops(
    device: torch.device | str, precision: str = "fp32", threads: int | None = None, refresh: bool = False
) -> float:
    """Peak FLOP/s for MFU: the table on a listed GPU in bf16, else a measured matmul (cached).

    ``refresh=True`` measures again and keeps the larger of the old and new value, so a run
    on a noisy machine can re-measure between steps and keep the best.
    """
    device = torch.device(device)
    dtype = precision_dtype(precision)
    if precision == "bf16":
        tabled = table_peak_flops(device)
        if tabled is not None:
            return tabled
    threads = threads or torch.get_num_threads()
    key = (str(device), precision, threads if device.type == "cpu" else 0)
    if refresh or key not in _peak_cache:
        measured = measure_matmul_peak(dtype, device, threads)
        _peak_cache[key] = max(measured, _peak_cache.get(key, 0.0))
    return _peak_cache[key]


def flops_per_token(
    arch: Mapping, num_params: int, seq_len: int, mlm_probability: float, vocab: int
) -> float:
    """Training FLOPs per token: 6·N (forward 2·N, backward 4·N) plus attention 12·L·H·T.

    With sparse prediction the tied decoder's matmul runs only on the masked fraction of tokens.
    Softmax, LayerNorm, GELU and the loss are not counted (a few percent for small widths).
    """
    width, layers = arch["hidden_size"], arch["num_layers"]
    dense = num_params
    if arch["sparse_prediction"]:
        decoder = width * vocab
        dense = num_params - decoder + decoder * mlm_probability
    return 6.0 * dense + 12.0 * layers * width * seq_len


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation as a fraction (0.45 = 45%) of ``peak_flops``."""
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be positive, got {peak_flops}")
    return tokens_per_s * flops_per_token / peak_flops


PEAK_REFRESH_SECONDS = 300  # a CPU re-measurement costs ~0.5 s of matmuls, so at most every 5 minutes


class MFUMeter:
    """The MFU figure of one run: its FLOPs per token against the device's peak.

    Built before the budget clock starts (on CPU the peak is a measured matmul). On CPU
    :meth:`refresh_if_due` measures again now and then and keeps the best peak seen, so a peak
    measured while other jobs shared the cores does not inflate every later figure.
    """

    def __init__(self, flops_per_token: float, device: torch.device, dtype: torch.dtype):
        self.flops_per_token, self.device = flops_per_token, torch.device(device)
        self.precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
        self.peak = device_peak_flops(self.device, self.precision)
        self.measured_at = time.monotonic()

    def __call__(self, tokens_per_s: float) -> float:
        return mfu(tokens_per_s, self.flops_per_token, self.peak)

    def refresh_if_due(self) -> None:
        if self.device.type != "cpu" or time.monotonic() - self.measured_at < PEAK_REFRESH_SECONDS:
            return
        self.peak = device_peak_flops(self.device, self.precision, refresh=True)
        self.measured_at = time.monotonic()
