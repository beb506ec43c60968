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
