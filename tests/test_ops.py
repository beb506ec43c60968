"""The dispatch point: which implementation runs for each op, per impl config and device."""

import pytest

from cramming import ops


@pytest.fixture(autouse=True)
def restore_dispatch():
    yield
    ops.configure({"kernels": "auto"})


def test_torch_choice_runs_the_reference_everywhere():
    ops.configure({"kernels": "torch"})
    assert ops.describe("cpu") == {"layer_norm": "torch", "gelu": "torch", "attention": "torch"}
    assert ops.describe("cuda") == {"layer_norm": "torch", "gelu": "torch", "attention": "torch"}


def test_auto_uses_the_interpreter_on_cpu_when_asked(monkeypatch):
    ops.configure({"kernels": "auto"})
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert set(ops.describe("cpu").values()) == {"triton-interpreter"}
    assert set(ops.describe("cuda").values()) == {"triton"}
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert set(ops.describe("cpu").values()) == {"torch"}


def test_per_op_override():
    ops.configure({"kernels": "triton", "ops": {"attention": "torch"}})
    assert ops.describe("cuda") == {"layer_norm": "triton", "gelu": "triton", "attention": "torch"}


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
        ops.configure(impl)


def test_self_check_passes_working_kernels_in_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    ops.configure({"kernels": "auto"})
    assert set(ops.self_check("cpu").values()) == {"triton-interpreter"}


def test_self_check_falls_back_when_a_kernel_breaks(monkeypatch, caplog):
    import cramming.kernels as kernels

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    ops.configure({"kernels": "auto"})

    def broken(*args, **kwargs):
        raise RuntimeError("PassManager::run failed")

    def wrong(x, weight, bias=None, eps=1e-12):
        return x * 2.0

    monkeypatch.setattr(kernels, "attention", broken, raising=False)
    monkeypatch.setattr(kernels, "layer_norm", wrong, raising=False)
    with caplog.at_level("WARNING", logger="cramming"):
        choices = ops.self_check("cpu")
    assert choices == {"layer_norm": "torch", "gelu": "triton-interpreter", "attention": "torch"}
    assert "PassManager::run failed" in caplog.text and "differ" in caplog.text
