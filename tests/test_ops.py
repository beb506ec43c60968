"""The dispatch point: which implementation runs for each op, per impl config and device."""

import pytest
import torch

from cramming.kernels import dispatch


@pytest.fixture(autouse=True)
def restore_dispatch():
    yield
    dispatch.configure({"kernels": "auto"})


def test_torch_choice_runs_the_reference_everywhere():
    dispatch.configure({"kernels": "torch"})
    assert dispatch.describe("cpu") == {"layer_norm": "torch", "gelu": "torch", "attention": "torch"}
    assert dispatch.describe("cuda") == {"layer_norm": "torch", "gelu": "torch", "attention": "torch"}


def test_auto_uses_the_interpreter_on_cpu_when_asked(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    dispatch.configure({"kernels": "auto"})
    assert set(dispatch.describe("cpu").values()) == {"triton-interpreter"}
    assert set(dispatch.describe("cuda").values()) == {"triton"}
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    dispatch.configure({"kernels": "auto"})
    assert set(dispatch.describe("cpu").values()) == {"torch"}


def test_choice_is_resolved_once_not_in_the_forward(monkeypatch):
    """Catches the dispatch looking up importlib.util.find_spec or os.environ at every kernel call:
    on torch < 2.12 Dynamo cannot trace find_spec, so each call inside the compiled forward broke
    the graph (and the environment read there is also a guard that can force recompiles)."""
    from types import SimpleNamespace

    import torch

    dispatch.configure({"kernels": "auto"})

    def fail(*args, **kwargs):
        raise AssertionError("the dispatch looked something up at call time")

    class Environ:
        get = __getitem__ = __contains__ = fail

    monkeypatch.setattr(dispatch, "importlib", SimpleNamespace(util=SimpleNamespace(find_spec=fail)))
    monkeypatch.setattr(dispatch, "os", SimpleNamespace(environ=Environ()))
    x, w = torch.randn(4, 8), torch.ones(8)
    assert dispatch.describe("cpu")["layer_norm"] in ("triton-interpreter", "torch")
    dispatch.layer_norm(x, w, None, 1e-12)
    dispatch.gelu(x)
    q = torch.randn(1, 1, 4, 32)
    dispatch.attention(q, q, q)


def test_check_kernels_validates_without_configuring():
    """Catches config validation changing the process's kernel choice: only the runtime configures."""
    dispatch.configure({"kernels": "torch"})
    assert dispatch.check_kernels({"kernels": "auto", "ops": {"gelu": "torch"}}) == {
        "layer_norm": "auto",
        "gelu": "torch",
        "attention": "auto",
    }
    assert set(dispatch.describe("cpu").values()) == {"torch"}
    with pytest.raises(ValueError, match="'fast'"):
        dispatch.check_kernels({"kernels": "fast"})


def test_configure_runs_the_self_check_on_the_jobs_gpu_only(monkeypatch):
    """Catches make_runtime's one configure call skipping the GPU start-up check (or running it on CPU)."""
    seen = []
    monkeypatch.setattr(dispatch, "self_check", lambda device, dtype: seen.append((str(device), dtype)))
    dispatch.configure({"kernels": "auto"}, device="cpu")
    assert seen == []
    dispatch.configure({"kernels": "auto"}, device="cuda", dtype=torch.bfloat16)
    assert seen == [("cuda", torch.bfloat16)]


def test_auto_leaves_layer_norm_and_gelu_to_inductor_under_compile():
    """Catches auto running the Triton LayerNorm/GELU inside a compiled step on a GPU, where Inductor's
    fused add + LayerNorm + cast (and its fused GELU epilogues) move fewer bytes; attention stays Triton,
    and naming Triton explicitly still gets Triton."""
    dispatch.configure({"kernels": "auto"}, compiled=True)
    assert dispatch.describe("cuda") == {"layer_norm": "torch", "gelu": "torch", "attention": "triton"}
    dispatch.configure({"kernels": "auto"}, compiled=False)
    assert set(dispatch.describe("cuda").values()) == {"triton"}
    dispatch.configure({"kernels": "triton"}, compiled=True)
    assert set(dispatch.describe("cuda").values()) == {"triton"}


def test_per_op_override():
    dispatch.configure({"kernels": "triton", "ops": {"attention": "torch"}})
    assert dispatch.describe("cuda") == {"layer_norm": "triton", "gelu": "triton", "attention": "torch"}


@pytest.mark.parametrize(
    "impl, fragment",
    [
        ({"kernels": "cuda"}, "'cuda'"),
        ({"ops": {"softmax": "torch"}}, "softmax"),
        ({"ops": {"gelu": "fast"}}, "fast"),
    ],
)
def test_bad_choices_are_named(impl, fragment):
    with pytest.raises(ValueError, match=fragment):
        dispatch.configure(impl)


def test_self_check_passes_working_kernels_in_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    dispatch.configure({"kernels": "auto"})
    assert set(dispatch.self_check("cpu").values()) == {"triton-interpreter"}


def test_self_check_falls_back_when_a_kernel_breaks(monkeypatch, caplog):
    import cramming.kernels as kernels

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    dispatch.configure({"kernels": "auto"})

    def broken(*args, **kwargs):
        raise RuntimeError("PassManager::run failed")

    def wrong(x, weight, bias=None, eps=1e-12):
        return x * 2.0

    monkeypatch.setattr(kernels, "attention", broken, raising=False)
    monkeypatch.setattr(kernels, "layer_norm", wrong, raising=False)
    with caplog.at_level("WARNING", logger="cramming"):
        choices = dispatch.self_check("cpu")
    assert choices == {"layer_norm": "torch", "gelu": "triton-interpreter", "attention": "torch"}
    assert "PassManager::run failed" in caplog.text and "differ" in caplog.text
    checks = dispatch.self_check_results()
    assert checks["gelu"] == "passed" and checks["attention"].startswith("failed: RuntimeError")


def test_self_check_failure_is_fatal_when_triton_is_asked_for(monkeypatch):
    """Catches impl.kernels=triton silently running PyTorch after a failed self-check (a run labelled
    *_triton measuring PyTorch)."""
    import cramming.kernels as kernels

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    dispatch.configure({"kernels": "triton", "ops": {"gelu": "torch", "attention": "torch"}})
    monkeypatch.setattr(kernels, "layer_norm", lambda x, w, b=None, eps=1e-12: x * 2.0, raising=False)
    with pytest.raises(
        RuntimeError, match=r"impl.kernels=triton.*layer_norm kernel failed.*impl.ops.layer_norm=torch"
    ):
        dispatch.self_check("cpu")


def test_self_check_never_autotunes(monkeypatch):
    """Catches the start-up probes (tiny shapes) running the autotuner, whose cache key (T bucket, head
    dim, mask) they share with real fine-tuning shapes: those would reuse a tile chosen on a 4-block grid."""
    import cramming.kernels as kernels
    from cramming.kernels import _utils

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    dispatch.configure({"kernels": "auto", "ops": {"gelu": "torch", "layer_norm": "torch"}})
    seen = []

    def recording(*args, **kwargs):
        seen.append(_utils.AUTOTUNE)
        return kernels.attention_ref(*args[:3], kwargs.get("key_padding_mask"))

    monkeypatch.setattr(_utils, "AUTOTUNE", True)
    monkeypatch.setattr(kernels, "attention", recording, raising=False)
    assert dispatch.self_check("cpu")["attention"] == "triton-interpreter"
    assert seen == [False] and _utils.AUTOTUNE is True
