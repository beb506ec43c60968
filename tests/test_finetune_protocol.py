"""The GLUE-sane fine-tuning protocol: optimizer, clipping, dropout and the classification head."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer, models

from cramming.conf import read_yaml
from cramming.export.folder import load_model, save_export
from cramming.finetune import FinetuneSettings, engine
from cramming.finetune.encode import EncodedExamples
from cramming.finetune.engine import finetune
from cramming.finetune.pretrained import Pretrained, build_finetune_model, load_pretrained, resolve_head
from cramming.glue import resolve_settings
from cramming.kernels import dispatch as ops
from cramming.models import BertForPreTraining, build_classifier
from cramming.optim import build_adamw
from cramming.runtime import Runtime

CPU_FP32 = Runtime(torch.device("cpu"), torch.float32)  # eager fp32, as fine-tuning runs on CPU

REPO_ROOT = Path(__file__).resolve().parents[1]
VOCAB = 64


def arch(name: str = "tiny", **overrides) -> dict:
    loaded = read_yaml("arch", f"{name}.yaml")
    return {**loaded, **overrides}


@pytest.fixture(autouse=True)
def torch_ops():
    # The Triton interpreter (TRITON_INTERPRET=1 in conftest) is far too slow for training steps.
    ops.configure({"kernels": "torch"})
    yield
    ops.configure({"kernels": "auto"})


def regression_set(n: int = 8, target: float = 1e6) -> EncodedExamples:
    """Targets far from any initial prediction: the MSE gradient is huge."""
    rng = np.random.default_rng(0)
    ids = [rng.integers(5, VOCAB, size=6) for _ in range(n)]
    return EncodedExamples(ids, [np.zeros(6, dtype=np.int64)] * n, np.full(n, target, dtype=np.float32))


def run_and_watch(monkeypatch, settings: dict, data: EncodedExamples) -> tuple[list, list]:
    """Fine-tune one epoch through the settings path; the optimizers built and each step's gradient norm."""
    optimizers, norms = [], []

    def watched(*args, **kwargs):
        optimizer = build_adamw(*args, **kwargs)  # the real builder, not an earlier test's wrapper
        optimizers.append(optimizer)

        def record(opt, *_):
            grads = [p.grad.norm() for g in opt.param_groups for p in g["params"] if p.grad is not None]
            norms.append(float(torch.stack(grads).norm()))

        optimizer.register_step_pre_hook(record)
        return optimizer

    monkeypatch.setattr(engine, "build_adamw", watched)
    cfg = FinetuneSettings.from_mapping(
        {**settings, "lr": 1e-3, "epochs": 1, "batch_size": 4, "log_every": 0}
    )
    torch.manual_seed(0)
    model = build_classifier(arch(), VOCAB, num_labels=1)
    finetune(model, data, cfg, CPU_FP32, seed=0)
    return optimizers, norms


def test_optimizer_groups_follow_the_glue_settings(monkeypatch):
    """Catches: weight decay on any group (the old 0.01 on matrices), betas/eps not passed from the
    settings to AdamW, or a parameter left out of the optimizer."""
    settings = resolve_settings({})
    assert (settings["weight_decay"], settings["betas"], settings["eps"]) == (0.0, [0.9, 0.98], 1e-6)
    optimizers, _ = run_and_watch(
        monkeypatch, {**settings, "betas": [0.8, 0.95], "eps": 1e-5}, regression_set()
    )
    (optimizer,) = optimizers
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 0.0]
    assert {(g["betas"], g["eps"]) for g in optimizer.param_groups} == {((0.8, 0.95), 1e-5)}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(
        list(build_classifier(arch(), VOCAB, 1).parameters())
    )


def test_a_huge_gradient_is_not_clipped_by_default(monkeypatch):
    """Catches: clipping left on in fine-tuning (the old max_grad_norm=1.0). The control run with
    grad_clip=1 shows the hook sees clipped gradients when clipping is on."""
    settings = resolve_settings({})
    assert settings["grad_clip"] == 0.0
    _, unclipped = run_and_watch(monkeypatch, settings, regression_set())
    _, clipped = run_and_watch(monkeypatch, {**settings, "grad_clip": 1.0}, regression_set())
    assert min(unclipped) > 1e3
    assert max(clipped) <= 1.0 + 1e-4


@pytest.mark.parametrize("bad", [{"betas": [0.9]}, {"betas": [0.9, 1.0]}, {"eps": 0}, {"grad_clip": -1},
                                 {"weight_decay": -0.1}, {"head": "mlp"}, {"attention_dropout": 1.5}])  # fmt: skip
def test_bad_protocol_values_are_named(bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key):
        resolve_settings(bad)


def test_crammed_head_shapes_and_tanh():
    """Catches: a head of the wrong width (the reference's is Linear(H, 1024) -> Linear(1024, n)) or a
    GELU/identity in place of the Tanh (saturating at -1 is only possible with tanh)."""
    model = build_classifier(arch(), VOCAB, num_labels=3).eval()
    width = arch()["hidden_size"]
    assert model.arch["classifier_head"] == "crammed"
    assert model.pooler.weight.shape == (1024, width) and model.classifier.weight.shape == (3, 1024)
    with torch.no_grad():
        model.pooler.weight.mul_(1e4)
        features = model.pool(model.encoder(torch.randint(5, VOCAB, (4, 9))))
    assert features.abs().max() <= 1.0
    assert features.min() < -0.99 and features.max() > 0.99
    bert = build_classifier(arch(), VOCAB, num_labels=3, head="bert")
    assert bert.pooler.weight.shape == (width, width) and bert.classifier.weight.shape == (3, width)


def test_attention_dropout_is_active_in_training_only():
    """Catches: attention dropout staying 0 in fine-tuning (the old behaviour) or left on in eval."""
    inputs = torch.randint(5, VOCAB, (2, 12))
    torch.manual_seed(0)
    model = build_classifier(arch(), VOCAB, num_labels=2, dropout=0.0, attention_dropout=0.1)
    model.train()
    assert not torch.equal(model(inputs)["logits"], model(inputs)["logits"])
    model.eval()
    assert torch.equal(model(inputs)["logits"], model(inputs)["logits"])
    # the control: with attention dropout 0 and hidden dropout 0, training mode is deterministic
    quiet = build_classifier(arch(), VOCAB, num_labels=2, dropout=0.0, attention_dropout=0.0).train()
    assert torch.equal(quiet(inputs)["logits"], quiet(inputs)["logits"])


def tokenizer() -> Tokenizer:
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    vocab.update({f"w{i}": i for i in range(5, VOCAB)})
    return Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))


def test_head_auto_follows_the_recipe_and_bert_keeps_its_pretrained_pooler(tmp_path):
    """Catches: recipe=bert exports fine-tuned with the crammed head, or BERT's pretrained pooler
    dropped for a fresh one (its own fine-tuning starts from it)."""
    crammed = Pretrained(tmp_path, {"arch": arch(), "task": "mlm"}, tokenizer(), {})
    assert resolve_head("auto", crammed) == "crammed" and resolve_head("gelu", crammed) == "gelu"
    bert_arch = arch("bert-base", num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    save_export(BertForPreTraining(bert_arch, VOCAB, nsp=True), tokenizer(), tmp_path / "bert")
    pretrained = load_pretrained(tmp_path / "bert")
    model = build_finetune_model(pretrained, num_labels=2)
    assert model.head == "bert" and model.arch["attention_dropout"] == 0.1
    assert torch.equal(model.pooler.weight, pretrained.pooler["weight"])


def test_an_old_export_keeps_its_old_head(tmp_path):
    """Catches: exports from before named heads (no classifier_head in config.json) rebuilt with the
    new default head, which would not load or would give other logits."""
    torch.manual_seed(0)
    old = build_classifier(arch(), VOCAB, num_labels=2, head="gelu").eval()
    save_export(old, tokenizer(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["arch"]["classifier_head"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_model(tmp_path)
    inputs = torch.randint(5, VOCAB, (2, 7))
    assert loaded.head == "gelu"
    assert torch.equal(loaded(inputs)["logits"], old(inputs)["logits"])


def test_finetuning_steps_through_pretrainings_optimizer_step(monkeypatch):
    """Catches fine-tuning growing its own optimizer step again (its own backward, clipping, scaler
    calls): every step goes through cramming.train.optimizer_step, one microbatch each."""
    from cramming.train import optimizer_step

    calls = []

    def counting(**kwargs):
        calls.append(kwargs["accum"])
        return optimizer_step(**kwargs)

    monkeypatch.setattr(engine, "optimizer_step", counting)
    run_and_watch(monkeypatch, resolve_settings({}), regression_set())
    assert calls == [1, 1]  # 8 examples, batch 4, one epoch


def test_one_rule_per_option_for_glue_and_finetune():
    """Catches the validators drifting apart again (dropout once had to be <= 0.9 for GLUE but < 1 for
    finetune) and a second definition of GLUE's average (the leaderboard once had its own)."""
    from cramming.finetune.command import check_config

    assert resolve_settings({"dropout": 0.95})["dropout"] == 0.95
    finetune_defaults = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "finetune.yaml"))
    finetune_cfg = {**finetune_defaults, "model": "m", "train_file": "t.csv"}
    assert check_config({**finetune_cfg, "dropout": 0.95}).dropout == 0.95
    for check in (resolve_settings, lambda bad: check_config({**finetune_cfg, **bad})):
        with pytest.raises(ValueError, match=r"dropout=1.0 must be a number in \[0, 1\)"):
            check({"dropout": 1.0})
        with pytest.raises(ValueError, match=r"max_length=4 is too short"):
            check({"max_length": 4})
    source = "\n".join(p.read_text() for p in (REPO_ROOT / "cramming").rglob("*.py"))
    assert len(re.findall(r"def glue_average\b", source)) == 1
    assert "torch.manual_seed" not in "\n".join(
        p.read_text() for p in (REPO_ROOT / "cramming" / "finetune").glob("*.py")
    )  # seeding is runtime.seed_everything's job


def test_finetune_settings_defaults_come_from_glue_yaml(tmp_path, monkeypatch):
    """Catches a second copy of the defaults in FinetuneSettings (it once had lr 4e-5 and eval batch 64 of its
    own beside conf/glue.yaml's auto and 128): every default is the YAML's, and editing the YAML changes it."""
    from dataclasses import fields

    import cramming.conf
    from cramming.config.finetune import CHECKS, yaml_defaults

    glue = read_yaml("glue.yaml")
    settings = FinetuneSettings()
    assert [f.name for f in fields(FinetuneSettings)] == list(CHECKS)
    for f in fields(FinetuneSettings):
        want = tuple(glue[f.name]) if f.name == "betas" else glue[f.name]
        assert getattr(settings, f.name) == want, f.name
    edited = OmegaConf.load(cramming.conf.CONF_DIR / "glue.yaml")
    edited.update(lr=1e-4, batch_size=24, eval_batch_size=96, epochs=3, seed=7, head="bert", betas=[0.8, 0.9])
    OmegaConf.save(edited, tmp_path / "glue.yaml")
    try:
        with monkeypatch.context() as patch:
            patch.setattr(cramming.conf, "CONF_DIR", tmp_path)
            yaml_defaults.cache_clear()
            new = FinetuneSettings()
            assert (new.lr, new.batch_size, new.eval_batch_size, new.epochs) == (1e-4, 24, 96, 3)
            assert (new.seed, new.head, new.betas) == (7, "bert", (0.8, 0.9))
            partial = FinetuneSettings.from_mapping({"batch_size": 8})  # the keys it lacks: the YAML's
            assert (partial.batch_size, partial.eval_batch_size) == (8, 96)
    finally:
        yaml_defaults.cache_clear()
