"""Classification inference, teacher vs student side by side: throughput, latency, size.

    python benchmarks/bench_inference.py --teacher outputs/RUN/model --student outputs/student/model
    python benchmarks/bench_inference.py --teacher T --student S --threads 2 --devices cpu

Each export's encoder gets a 2-label classification head (``cramming.models.build_classifier``; the
head's weights do not change the timing) and runs in eval mode under ``torch.inference_mode``:

- throughput: sequences/s at batch 32, sequence length 128 (``--batch``, ``--seq-len``);
- latency: milliseconds per call at batch 1, same length (median of the timed calls, p20/p80 too);
- parameters of the exported model and the bytes of its export folder.

Devices: the CPU (fp32, ``--threads`` threads) and, when CUDA is present, the GPU under bf16 autocast.
Each measurement times ``--repeats`` calls after ``--warmup`` untimed ones, teacher and student
alternating in rounds so a busy shared machine slows both alike. Writes ``<out>/inference_<name>.json``
and ``.md`` (``--name``, default ``<teacher folder>_vs_<student folder>``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from cramming.export.folder import load_model
from cramming.models import build_classifier, count_parameters
from cramming.runtime import make_runtime

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", required=True, help="the teacher's export folder (outputs/RUN/model)")
    p.add_argument("--student", required=True, help="the student's export folder")
    p.add_argument("--batch", type=int, default=32, help="throughput batch size (default 32)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default as impl.threads=null)")
    p.add_argument("--devices", default="auto", help="cpu, cuda, or auto (CPU, plus the GPU when present)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per measurement and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    p.add_argument("--rounds", type=int, default=3, help="teacher/student alternations")
    p.add_argument("--kernels", default="auto", help="impl.kernels: auto | torch | triton")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results folder")
    p.add_argument("--name", default=None, help="results file stem after inference_")
    return p.parse_args(argv)


def export_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())


def classifier_of(folder: Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The export's encoder under a 2-label head, eval mode; and its size facts."""
    mlm = load_model(folder)
    model = build_classifier(mlm.arch, mlm.vocab_size, 2, mlm.encoder.state_dict(), dropout=0.0)
    facts = {
        "export": str(folder),
        "layers": int(mlm.arch["num_layers"]),
        "hidden_size": int(mlm.arch["hidden_size"]),
        "parameters": count_parameters(mlm),
        "classifier_parameters": count_parameters(model),
        "export_bytes": export_bytes(folder),
        "teacher": (getattr(mlm, "config", {}).get("teacher") or {}).get("path"),
    }
    return model.to(device).eval(), facts


def timed_calls(model, ids, mask, device, dtype, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of ``repeats`` forward passes after ``warmup`` untimed ones."""
    cast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    samples = []
    with torch.inference_mode(), cast:
        for index in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            model(ids, attention_mask=mask)
            sync()
            if index >= warmup:
                samples.append(time.perf_counter() - start)
    return samples


def measure(models: dict, device: torch.device, args: argparse.Namespace) -> dict:
    """{role: {throughput_seq_s, latency_ms, ...}} with teacher and student timed in alternating rounds."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    vocab = min(m.vocab_size for m in models.values())
    g = torch.Generator().manual_seed(0)
    shapes = {"batch": args.batch, "single": 1}
    inputs = {
        k: torch.randint(5, vocab, (b, args.seq_len), generator=g).to(device) for k, b in shapes.items()
    }
    samples = {role: {k: [] for k in shapes} for role in models}
    for _ in range(args.rounds):
        for role, model in models.items():
            for key, ids in inputs.items():
                mask = torch.ones_like(ids)
                samples[role][key] += timed_calls(model, ids, mask, device, dtype, args.warmup, args.repeats)
    out = {}
    for role, s in samples.items():
        lat = sorted(s["single"])
        out[role] = {
            "throughput_seq_s": args.batch / statistics.median(s["batch"]),
            "latency_ms": 1e3 * statistics.median(lat),
            "latency_ms_p20": 1e3 * lat[int(0.2 * (len(lat) - 1))],
            "latency_ms_p80": 1e3 * lat[int(0.8 * (len(lat) - 1))],
            "precision": str(dtype).replace("torch.", ""),
        }
    return out


def devices_of(choice: str) -> list[torch.device]:
    if choice == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_inference: --devices cuda, but no CUDA device is available")
    if choice not in ("cpu", "cuda"):
        raise SystemExit(f"bench_inference: --devices={choice!r} is not one of ['auto', 'cpu', 'cuda']")
    return [torch.device(choice)]


def markdown(result: dict) -> str:
    lines = [
        f"# Inference: teacher vs student (batch {result['batch']}, seq {result['seq_len']})",
        "",
        "| device | model | layers | parameters | export MB | seq/s (batch) | latency ms (batch 1) | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for device, timing in result["timings"].items():
        base = timing["teacher"]
        for role in ("teacher", "student"):
            facts, t = result["models"][role], timing[role]
            speed = t["throughput_seq_s"] / base["throughput_seq_s"]
            lines.append(
                f"| {device} ({t['precision']}) | {role} | {facts['layers']} | {facts['parameters']:,} | "
                f"{facts['export_bytes'] / 2**20:.2f} | {t['throughput_seq_s']:.1f} | {t['latency_ms']:.2f} | "
                f"{speed:.2f}x |"
            )
    lines += ["", f"Hardware: {result['hardware']}; torch {result['torch']}; threads {result['threads']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    devices = devices_of(args.devices)
    gpu = any(d.type == "cuda" for d in devices)  # the GPU, when measured, gets the runtime's kernel check
    make_runtime({"device": "cuda" if gpu else "cpu", "threads": args.threads, "kernels": args.kernels})
    folders = {"teacher": Path(args.teacher), "student": Path(args.student)}
    result = {"batch": args.batch, "seq_len": args.seq_len, "threads": torch.get_num_threads()}
    result.update(torch=torch.__version__, argv=sys.argv, models={}, timings={})
    for device in devices:
        models = {}
        for role, folder in folders.items():
            models[role], result["models"][role] = classifier_of(folder, device)
        result["timings"][device.type] = measure(models, device, args)
    names = [torch.cuda.get_device_name()] if torch.cuda.is_available() else []
    result["hardware"] = ", ".join(["CPU", *names])
    t, s = result["models"]["teacher"], result["models"]["student"]
    result["parameter_ratio"] = s["parameters"] / t["parameters"]
    result["speedup"] = {
        d: v["student"]["throughput_seq_s"] / v["teacher"]["throughput_seq_s"]
        for d, v in result["timings"].items()
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or f"{folders['teacher'].parent.name}_vs_{folders['student'].parent.name}"
    (out / f"inference_{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"inference_{name}.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
