"""arch=small-deep: a deeper-narrower arch=small at about the same training FLOPs per token."""

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cramming.config import CONF_PATH, check_group
from cramming.models import build_mlm, count_parameters
from cramming.perf import flops_per_token


def composed(arch: str) -> dict:
    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        cfg = compose("pretrain", overrides=[f"arch={arch}"])
    return OmegaConf.to_container(cfg, resolve=True)


def test_small_deep_has_the_flops_per_token_of_small_and_its_cpu_recipe():
    """Catches a shape preset whose FLOPs drifted from arch=small's (then it is not an equal-FLOPs
    comparison), a wrong figure in its comment, or a missing train/small-deep.yaml (train=${arch})."""
    flops, params = {}, {}
    for name in ("small", "small-deep"):
        cfg = composed(name)
        check_group("arch", cfg["arch"])
        params[name] = count_parameters(build_mlm(cfg["arch"], 32768))
        flops[name] = flops_per_token(cfg["arch"], params[name], 128, 0.25, 32768)
    assert composed("small-deep")["train"] == composed("small")["train"]
    assert flops["small-deep"] == pytest.approx(flops["small"], rel=0.03)
    assert (params["small"], params["small-deep"]) == (
        11_015_168,
        9_247_488,
    )  # as its comment says (rotary: no position scale)
    deep = composed("small-deep")["arch"]
    assert deep["num_layers"] == 2 * composed("small")["arch"]["num_layers"]
    assert deep["hidden_size"] // deep["num_heads"] == 64  # the same head size as small
