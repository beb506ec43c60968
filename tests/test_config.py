"""Every preset composes, and bad values are refused with a message naming them."""

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cramming.config import CONF_PATH, ConfigError, check_group
from cramming.models import build_mlm, count_parameters

ARCHES = ["crammed-bert", "bert-base", "small", "tiny"]


def compose_pretrain(overrides):
    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        return OmegaConf.to_container(compose("pretrain", overrides=overrides), resolve=False)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("data", ["local", "wikipedia"])
@pytest.mark.parametrize("train", ["bert-o4", "cpu"])
def test_presets_compose(arch, data, train):
    cfg = compose_pretrain([f"arch={arch}", f"data={data}", f"train={train}", "budget=90m"])
    assert cfg["arch"]["name"] == arch
    assert cfg["data"]["source"] == ("hub" if data == "wikipedia" else "local")
    check_group("arch", cfg["arch"])
    check_group("train", cfg["train"])
    check_group("impl", cfg["impl"])


@pytest.mark.parametrize("mode", ["disabled", "offline", "online"])
def test_wandb_presets(mode):
    assert compose_pretrain([f"wandb={mode}"])["wandb"]["mode"] == mode


def test_defaults_follow_the_recipe():
    cfg = compose_pretrain([])
    assert cfg["arch"]["name"] == "crammed-bert" and cfg["budget"] == "24h"
    train = cfg["train"]
    assert train["lr"] == 1e-3 and train["betas"] == [0.9, 0.98] and train["eps"] == 1e-12
    assert train["weight_decay"] == 0.01 and train["grad_clip"] == 0.5
    assert train["schedule"] == "wsd" and train["batch_size"] == 8192
    assert cfg["data"]["vocab_size"] == 32768 and cfg["data"]["seq_len"] == 128
    assert cfg["data"]["mlm_probability"] == 0.4 and cfg["arch"]["position_embedding"] == "rotary"


def test_crammed_paper_recipe_restores_the_papers_settings():
    """Catches recipe=crammed-paper drifting from crammedBERT (the default recipe=crammed changed three
    keys after the recipe search), on the 24-hour and the CPU recipe alike."""
    for arch, lr in (("crammed-bert", 1e-3), ("small", 1e-3)):
        cfg = compose_pretrain(["recipe=crammed-paper", f"arch={arch}"])
        assert cfg["recipe"] == "crammed-paper" and cfg["train"]["schedule"] == "budget-triangle2"
        assert cfg["train"]["lr"] == lr and cfg["data"]["mlm_probability"] == 0.25
        assert cfg["arch"]["position_embedding"] == "scaled-sinusoidal"
    ours = compose_pretrain(["arch=small"])
    assert ours["train"]["lr"] == 2e-3 and ours["train"]["schedule"] == "wsd"


def test_crammed_bert_has_the_reference_size():
    cfg = compose_pretrain([])
    params = count_parameters(build_mlm(cfg["arch"], 32768))
    assert 115e6 < params < 125e6  # ~120M as in the paper


def test_unknown_arch_names_the_options():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as err:
        compose_pretrain(["arch=huge"])
    assert "huge" in str(err.value)


@pytest.mark.parametrize(
    "section, key, value, fragment",
    [
        ("train", "schedule", "linear", "budget-triangle2"),
        ("train", "lr", -1.0, "train.lr"),
        ("train", "microbatch_size", 0, "train.microbatch_size"),
        ("impl", "precision", "fp8", "fp32"),
        ("arch", "num_heads", 5, "divisible"),
        ("arch", "ffn", "swiglu", "glu"),
    ],
)
def test_bad_values_are_named(section, key, value, fragment):
    cfg = compose_pretrain(["arch=tiny"])
    cfg[section][key] = value
    with pytest.raises(ConfigError) as err:
        check_group(section, cfg[section])
    assert fragment in str(err.value) and str(value) in str(err.value)


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("train", "lr", "abc"),
        ("train", "microbatch_size", "many"),
        ("train", "batch_size", 2.5),
        ("arch", "num_layers", "x"),
    ],
)
def test_non_numbers_name_their_key(section, key, value):
    cfg = compose_pretrain(["arch=tiny"])
    cfg[section][key] = value
    with pytest.raises(ConfigError, match=rf"{section}\.{key}={value!r}"):
        check_group(section, cfg[section])


def test_forced_triton_on_cpu_needs_the_interpreter(monkeypatch):
    from cramming.kernels import dispatch as ops

    cfg = compose_pretrain(["arch=tiny", "impl.kernels=triton", "impl.device=cpu"])
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    try:
        with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
            check_group("impl", cfg["impl"])
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        check_group("impl", cfg["impl"])
        cfg["impl"]["kernels"] = "fast"
        with pytest.raises(ConfigError, match="'fast'"):
            check_group("impl", cfg["impl"])
    finally:
        ops.configure({"kernels": "auto"})


def test_the_composed_config_is_typed_and_checked_once():
    """Catches a group YAML not built on its schema (``to_object`` would return plain dicts) and a check
    that only runs from one entry point: the composed config becomes the dataclasses, checks included."""
    from cramming.config.schema import ArchConfig, PretrainConfig

    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        typed = OmegaConf.to_object(compose("pretrain", overrides=["arch=tiny", "data=sample"]))
        assert isinstance(typed, PretrainConfig) and isinstance(typed.arch, ArchConfig)
        assert typed.arch.hidden_size == 128 and typed.train.lr == 2e-3
        with pytest.raises(ValueError, match=r"train.lr=-1.0 must be positive"):
            OmegaConf.to_object(compose("pretrain", overrides=["arch=tiny", "train.lr=-1"]))


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("arch.hidden_size=abc", "arch.hidden_size"),  # a wrong type, named while composing
        ("train.lrr=1", "train.lrr"),  # an unknown key
        ("data.hub.pathh=x", "data.hub.pathh"),
        ("impl.ops.softmax=torch", "impl.ops.softmax"),
    ],
)
def test_overrides_are_type_checked_naming_the_key(override, fragment):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        compose_pretrain([override])
    assert fragment in str(err.value) + str(err.value.__cause__)


def test_every_group_preset_is_built_on_its_schema():
    """Catches a new conf/GROUP/*.yaml that forgets ``defaults: [schema, _self_]`` (directly or through the
    preset it extends): its keys would go unchecked when composed without the pretraining root."""
    from cramming.config import CONF_DIR
    from cramming.config.schema import GROUPS

    for group in GROUPS:
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            entries = OmegaConf.load(path).get("defaults", [])
            assert "schema" in entries or any((CONF_DIR / group / f"{e}.yaml").is_file() for e in entries), (
                path
            )


def test_plain_dicts_get_the_same_refusals():
    """Python callers (no Hydra) get an unknown or missing key named, and the checks of the schema."""
    cfg = compose_pretrain(["arch=tiny"])
    with pytest.raises(ConfigError, match=r"train has unknown key\(s\) \['lrr'\]"):
        check_group("train", {**cfg["train"], "lrr": 1})
    del cfg["arch"]["num_heads"]
    with pytest.raises(ConfigError, match=r"arch lacks key\(s\) \['num_heads'\]"):
        check_group("arch", cfg["arch"])


def test_checking_impl_leaves_the_kernel_choice_alone(monkeypatch):
    """Catches validation that configures the kernels (a global): only runtime.make_runtime may."""
    from cramming.kernels import dispatch as ops

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    before = dict(ops._choice)
    cfg = compose_pretrain(["impl.kernels=torch" if before["gelu"] != "torch" else "impl.kernels=auto"])
    check_group("impl", cfg["impl"])
    assert ops._choice == before


# The other commands' roots: what each needs on the command line to compose.
COMMANDS = {"glue": [], "finetune": ["model=m", "train_file=t.csv"], "predict": ["model=m"],
            "distill": ["teacher=t"]}  # fmt: skip


@pytest.mark.parametrize(
    "command, override, key",
    [
        ("glue", "epochs=abc", "epochs"),  # a wrong type
        ("glue", "batch_size=1.5", "batch_size"),
        ("glue", "seeds=two", "seeds"),
        ("glue", "batch_sizee=3", "batch_sizee"),  # an unknown key
        ("glue", "impl.devise=cpu", "impl.devise"),
        ("finetune", "epochs=abc", "epochs"),
        ("finetune", "batch_size=1.5", "batch_size"),
        ("finetune", "batch_sizee=3", "batch_sizee"),
        ("predict", "batch_size=1.5", "batch_size"),
        ("predict", "keep_columns=maybe", "keep_columns"),
        ("predict", "outptu=p.csv", "outptu"),
        ("distill", "student.num_layerz=3", "student.num_layerz"),
        ("distill", "student.num_layers=abc", "student.num_layers"),
        ("distill", "distill.temprature=2", "distill.temprature"),
    ],
)
def test_command_overrides_are_type_checked_naming_the_key(command, override, key):
    """Catches conf/glue.yaml, finetune.yaml, predict.yaml or distill.yaml composed without its root schema
    (``COMMAND_schema`` first in its defaults): Hydra would take ``epochs=abc`` or a misspelt key silently."""
    from hydra.errors import ConfigCompositionException

    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        with pytest.raises(ConfigCompositionException) as err:
            compose(command, overrides=[*COMMANDS[command], override])
    assert f"full_key: {key}" in str(err.value.__cause__)


def test_command_configs_are_typed_and_keep_their_required_keys():
    """Catches a root schema that gives ``???`` keys a default, refuses what a command accepts (``tasks=sst2``,
    class weights as a list, a teacher's arch filled in later) or checks the fine-tuning keys a second way."""
    from cramming.config.schema import FinetuneCommandConfig, GlueCommandConfig, ImplConfig

    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        assert OmegaConf.missing_keys(compose("finetune")) == {"model", "train_file"}
        assert OmegaConf.missing_keys(compose("predict")) == {"model"}
        assert OmegaConf.missing_keys(compose("distill")) == {"teacher"}
        glue = OmegaConf.to_object(compose("glue", overrides=["tasks=sst2", "lr=1e-4"]))
        assert isinstance(glue, GlueCommandConfig) and isinstance(glue.impl, ImplConfig)
        assert glue.tasks == "sst2" and glue.lr == 1e-4 and glue.model is None
        finetune = compose("finetune", overrides=[*COMMANDS["finetune"], "class_weights=[1,2]"])
        assert isinstance(OmegaConf.to_object(finetune), FinetuneCommandConfig)
        # the range checks are FinetuneSettings' (one per field), reached from the typed roots too
        with pytest.raises(ValueError, match=r"lr=-1 must be a number in \(0, 1\] or 'auto'"):
            OmegaConf.to_object(compose("glue", overrides=["lr=-1"]))
        with pytest.raises(ValueError, match=r"dropout=1.0 must be a number in \[0, 1\)"):
            OmegaConf.to_object(compose("finetune", overrides=[*COMMANDS["finetune"], "dropout=1.0"]))
        distill = compose("distill", overrides=COMMANDS["distill"])
        assert distill.arch is None and distill.student.num_layers is None
