"""torch.compile of the training step: one graph, no recompiles, and an eager fallback that changes nothing."""

import json
import logging
import os
import re

import pytest
import torch
import torch._dynamo
from hydra import compose, initialize_config_dir

from cramming import runtime
from cramming.conf import read_yaml
from cramming.config import CONF_PATH
from cramming.data import MLMCollator
from cramming.kernels import dispatch as ops
from cramming.models import build_mlm
from cramming.pretrain import pretrain_main
from cramming.runtime import CompiledStep, Runtime, make_runtime
from cramming.train import optimizer_step

SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
VOCAB, T = 300, 32


@pytest.fixture(autouse=True)
def restore_ops():
    yield
    ops.configure({"kernels": "auto"})
    torch._dynamo.reset()


def tiny_model() -> torch.nn.Module:

    arch = read_yaml("arch", "tiny.yaml")
    torch.manual_seed(0)
    return build_mlm({**arch, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2}, VOCAB)


def batches(count: int, size: int = 2) -> list[dict]:
    collate = MLMCollator(VOCAB, SPECIAL)
    g = torch.Generator().manual_seed(0)
    return [collate(torch.randint(5, VOCAB, (size, T), generator=g), generator=g) for _ in range(count)]


# triton: the interpreter's custom ops here; auto: the dispatch itself (it used to call importlib's
# find_spec at every kernel call, which Dynamo on torch < 2.12 cannot trace)
@pytest.mark.parametrize("kernels", ["torch", "triton", "auto"])
def test_pretraining_forward_is_one_graph(kernels):
    """Catches a graph break in the pretraining forward (a .item(), a print, an op Dynamo cannot trace,
    a Triton kernel launched outside a registered op, a dispatch lookup at call time): each splits the
    step and costs a host sync."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if kernels == "triton" and device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1")
    ops.configure({"kernels": kernels})
    if kernels == "auto" and device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        assert ops.describe(device)["attention"] == "triton-interpreter"  # auto resolved to the kernels
    model = tiny_model().to(device)
    batch = {name: t.to(device) for name, t in batches(1)[0].items()}
    explanation = torch._dynamo.explain(model)(**batch)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_auto_forward_and_backward_trace_whole_after_make_runtime():
    """Catches the kernel choice being re-resolved inside the compiled step (a find_spec or environment
    lookup per kernel call, a graph break on torch < 2.12) or a kernel whose backward cannot be traced:
    under impl.kernels=auto, as make_runtime configures it, the forward is one graph with no breaks, and
    fullgraph compilation of forward + backward (AOTAutograd traces the backward) raises on any break."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    make_runtime({"device": device, "kernels": "auto", "threads": 1})
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        assert set(ops.describe(device).values()) == {"triton-interpreter"}  # the kernels are what is traced
    model = tiny_model().to(device)
    batch = {name: t.to(device) for name, t in batches(1)[0].items()}
    explanation = torch._dynamo.explain(model)(**batch)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
    compiled(**batch)["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_finetuning_forward_with_attention_dropout_is_one_graph():
    """Catches the one-time 'attention dropout is not fused' warning being logged while Dynamo traces
    (GLUE fine-tunes with attention dropout 0.1): a graph break, then a recompile once it has fired."""
    from _glue_fixtures import tiny_arch

    from cramming.models import build_classifier

    ops.configure({"kernels": "auto"})
    ops._warned.discard("attention-dropout")  # as in a fresh process
    model = build_classifier({**tiny_arch(), "attention_dropout": 0.1}, VOCAB, 2).train()
    ids = torch.randint(5, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    explanation = torch._dynamo.explain(model)(ids, torch.ones_like(ids), torch.tensor([0, 1]))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compile_auto_is_on_for_cuda_only():
    """Catches impl.compile=auto compiling on CPU (minutes of compile, little gain) or not on a GPU."""
    assert runtime.resolve_compile("auto", torch.device("cpu")) is False
    assert make_runtime({"device": "cpu"}).compile is False
    assert make_runtime({"device": "cpu", "compile": True, "compile_mode": "reduce-overhead"}).compile is True
    if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (7, 0):
        assert runtime.resolve_compile("auto", torch.device("cuda")) is True


@pytest.mark.parametrize(
    "impl, message",
    [
        (
            {"compile_mode": "fastest"},
            r"impl.compile_mode='fastest' is not one of \['default', 'max-autotune",
        ),
        ({"compile": "yes"}, r"impl.compile='yes' is not one of auto, true, false"),
    ],
)
def test_bad_compile_settings_are_refused(impl, message):
    with pytest.raises(ValueError, match=message):
        runtime.resolve_impl(impl)


class FailsInBackward(torch.autograd.Function):
    """Stands in for a compiler error that only shows when the lazily compiled backward first runs."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("inductor: C++ compile failed\nlong traceback")


class BrokenCompiled(torch.nn.Module):
    """A 'compiled' model whose second microbatch fails in backward, after the first left gradients."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, **batch):
        out = dict(self.model(**batch))
        self.calls += 1
        if self.calls == 2:
            out["loss"] = FailsInBackward.apply(out["loss"])
        return out


def two_steps(data: list[dict], broken: bool) -> list[torch.Tensor]:
    """Two optimizer steps of two microbatches each; ``broken``: through a compile that fails."""
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cpu = Runtime(torch.device("cpu"), torch.float32, compile=broken)
    step, stream = CompiledStep(model, cpu), iter(data)
    for _ in range(2):
        step.run(lambda m, nxt: optimizer_step(m, optimizer, nxt, 2, 0.1, 0.0, cpu), lambda: next(stream))
    assert step.fell_back is broken and step.module is model
    return [p.detach().clone() for p in model.parameters()]


def test_compile_failure_falls_back_to_eager_on_the_same_batches(monkeypatch, caplog):
    """Catches a fallback that crashes, loses the batches the failed try drew, or keeps its partial
    gradients: the weights after the fallback step must equal those of a plain eager step."""
    ops.configure({"kernels": "torch"})
    caplog.set_level(logging.WARNING, logger="cramming")
    data = batches(4)
    monkeypatch.setattr(torch, "compile", lambda module, **options: BrokenCompiled(module))
    results = [two_steps(data, broken=False), two_steps(data, broken=True)]
    for eager, fallback in zip(*results):
        torch.testing.assert_close(fallback, eager)
    warnings = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "C++ compile failed" in warnings[0] and "traceback" not in warnings[0]


@pytest.mark.slow  # ~1-2 min on a loaded 2-core CPU: Inductor compiles the forward and the backward
def test_compiled_pretraining_has_no_recompiles_across_the_ramp(tiny_corpus, tmp_path, caplog):
    """Catches a recompile between microbatches or when the batch-size ramp raises the accumulation
    (a shape or Python value that changes per step), and a compiled run that never reports compiling."""
    from torch._dynamo.utils import counters

    overrides = [
        "budget=6steps", "name=compiled", f"base_dir={tmp_path}", "arch=tiny", "train=cpu",
        "train.microbatch_size=4", "train.batch_size_start=4", "train.batch_size=12",
        "train.batch_ramp_fraction=0.5", "train.validation_batches=1", "data=local",
        f"data.files=[{tiny_corpus['train']}]", "data.vocab_size=1024", f"data.cache_dir={tmp_path / 'cache'}",
        "impl.kernels=torch", "impl.compile=true", "impl.device=cpu",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        cfg = compose("pretrain", overrides=overrides)
    torch._dynamo.reset()
    counters.clear()
    with (
        torch._dynamo.config.patch(error_on_recompile=True),
        caplog.at_level(logging.INFO, logger="cramming"),
    ):
        summary = pretrain_main(cfg)
    assert summary["finished"] and summary["compiled"] and summary["compile_s"] > 0
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert sum("compiled the pretraining step in" in r.getMessage() for r in caplog.records) == 1
    records = [
        json.loads(line) for line in (tmp_path / "compiled" / "metrics.jsonl").read_text().splitlines()
    ]
    batch_sizes = {r["batch_size"] for r in records if "batch_size" in r}
    assert len(batch_sizes) > 1, f"the ramp did not change the batch size: {batch_sizes}"


def test_compiled_finetuning_sees_only_bucket_lengths(monkeypatch):
    """Catches per-batch padding under compile (a graph per length, and past Dynamo's limit of 8 an
    eager run without a word), a recompile in the second epoch, and bucketing that changes the result."""
    import numpy as np
    from _glue_fixtures import tiny_arch

    from cramming.config.finetune import FinetuneSettings
    from cramming.finetune.encode import EncodedExamples, bucket_lengths
    from cramming.finetune.engine import finetune, predict
    from cramming.models import build_classifier

    ops.configure({"kernels": "torch"})
    widths, graphs = [], []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        widths.extend(t.shape[1] for t in example_inputs if t.dtype == torch.long and t.ndim == 2)
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda m, mode, dynamic: real_compile(m, backend=counting_backend, dynamic=dynamic)
    )
    rng = np.random.default_rng(0)
    ids = [rng.integers(5, 200, size=n) for n in range(2, 46)]  # 44 examples, 44 lengths
    data = EncodedExamples(ids, [np.zeros_like(x) for x in ids], np.arange(44) % 2, pad_id=0)
    logits = []
    for compile in (False, True):
        torch.manual_seed(0)
        model = build_classifier(tiny_arch(), 300, num_labels=2, dropout=0.0)
        cfg = FinetuneSettings(lr=1e-3, batch_size=8, epochs=2, log_every=0)
        runtime = Runtime(torch.device("cpu"), torch.float32, compile=compile)
        logits.append(predict(finetune(model, data, cfg, runtime, seed=0), data, runtime=runtime))
    buckets = bucket_lengths(45)
    assert buckets == (16, 24, 40, 48)
    assert widths and set(widths) <= set(buckets), widths
    assert len(graphs) <= 2 * len(buckets)  # full batches and the one short batch of an epoch
    np.testing.assert_allclose(logits[1], logits[0], rtol=1e-4, atol=1e-5)


def test_reduce_overhead_is_refused_when_steps_accumulate():
    """Catches impl.compile_mode=reduce-overhead with gradient accumulation: CUDA graph replays overwrite
    the gradients the earlier microbatches left (known upstream), so such a run must not start."""
    compiled = Runtime(torch.device("cpu"), torch.float32, compile=True, compile_mode="reduce-overhead")
    with pytest.raises(ValueError, match=r"reduce-overhead cannot accumulate.*up to 2 microbatches"):
        CompiledStep(tiny_model(), compiled, max_microbatches=2)
    CompiledStep(tiny_model(), compiled, max_microbatches=1)  # one microbatch per step: fine
    eager = Runtime(torch.device("cpu"), torch.float32, compile=False, compile_mode="reduce-overhead")
    CompiledStep(tiny_model(), eager, max_microbatches=4)  # not compiled: the mode does nothing


def test_reduce_overhead_is_refused_at_the_start_of_a_ramp_that_accumulates_later(
    tiny_corpus, tmp_path, caplog
):
    """Catches the guard looking only at the first step: the ramp starts at one microbatch per step
    (batch_size_start = microbatch_size) and reaches 3 later (bert-o4 reaches 2 about 7 minutes into
    24 h), so the run must be refused before its first step, not crash hours in."""
    overrides = [
        "budget=4steps", "name=ro", f"base_dir={tmp_path}", "arch=tiny", "train=cpu",
        "train.microbatch_size=4", "train.batch_size_start=4", "train.batch_size=12",
        "train.batch_ramp_fraction=0.5", "data=local", f"data.files=[{tiny_corpus['train']}]",
        "data.vocab_size=1024", f"data.cache_dir={tmp_path / 'cache'}", "impl.kernels=torch",
        "impl.compile=true", "impl.compile_mode=reduce-overhead", "impl.device=cpu", "impl.threads=1",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        cfg = compose("pretrain", overrides=overrides)
    with caplog.at_level(logging.ERROR, logger="cramming"), pytest.raises(SystemExit) as stop:
        pretrain_main(cfg)  # the CLI's one line and exit status 2
    assert stop.value.code == 2
    assert re.search(r"reduce-overhead cannot accumulate.*up to 3 microbatches", caplog.text)
    assert not (tmp_path / "ro" / "metrics.jsonl").exists()


def test_tf32_is_allowed_for_fp32_matmuls_on_gpu_only(monkeypatch):
    """Catches fp32 matmuls on a GPU left at full fp32 (TF32 tensor cores are ~8x faster and what
    Inductor assumes), and the setting leaking to CPU runs."""
    calls = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", calls.append)
    make_runtime({"device": "cpu", "kernels": "torch"})
    assert calls == []
    runtime.allow_tf32()
    assert calls == ["high"]
    if torch.cuda.is_available():
        make_runtime({"device": "cuda", "kernels": "torch"})
        assert calls == ["high", "high"]
