"""Distillation units: layer choice, the student's initial weights, the loss terms, bad input."""

import copy
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from tiny_export import build_tiny_classifier, tiny_arch, train_tokenizer
from tokenizers import Tokenizer, normalizers

import cramming.distill as distill_cli
from cramming.config import CONF_PATH
from cramming.config.checks import check_distill_config
from cramming.data.tokenizer import attach_post_processor
from cramming.distill import distill_main, distill_overrides, teacher_train_recipe
from cramming.distill.loss import Distiller, cosine_loss, soft_target_loss
from cramming.distill.model import check_same_vocabulary, check_teacher, init_student, layer_map, student_arch
from cramming.export.folder import load_model, save_export
from cramming.models import BertForMLM

DISTILL = {
    "alpha_ce": 5.0,
    "alpha_mlm": 2.0,
    "alpha_cos": 1.0,
    "temperature": 2.0,
    "soft_targets": "masked",
    "cosine_layers": "last",
}
VOCAB = 96


def teacher_of(layers: int, seed: int = 0, **arch) -> BertForMLM:
    torch.manual_seed(seed)
    return BertForMLM({**tiny_arch(), "num_layers": layers, **arch}, VOCAB).eval()


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (3, 24), generator=g)
    labels = torch.full_like(ids, -100)
    picked = torch.rand(ids.shape, generator=g) < 0.3
    labels[picked] = ids[picked]
    return ids, labels


def test_layer_map_matches_distilbert_and_covers_odd_depths():
    """Catches a layer choice that drifts from the released DistilBERT's [0, 2, 4, 7, 9, 11]."""
    assert layer_map(12, 6) == [0, 2, 4, 7, 9, 11]
    assert layer_map(2, 1) == [0]
    assert layer_map(5, 2) == [0, 4]
    assert layer_map(3, 2) == [0, 2]
    assert layer_map(4, 3) == [0, 2, 3]  # 1.5 rounds up


@pytest.mark.parametrize("untied", [False, True])
def test_student_starts_as_exactly_the_chosen_teacher_layers(untied):
    """Catches copying the wrong blocks (or in the wrong order), or leaving embeddings/norm/decoder random."""
    extra = {"tie_embeddings": False, "prediction_head": True} if untied else {}
    teacher = teacher_of(4, **extra)
    arch = student_arch(teacher.arch, 2, None)
    student = init_student(teacher, arch)
    assert len(student.encoder.blocks) == 2
    teacher_state = teacher.state_dict()
    chosen = {0: 0, 1: 3}
    for key, value in student.state_dict().items():
        if key.startswith("encoder.blocks."):
            _, _, index, rest = key.split(".", 3)
            source = f"encoder.blocks.{chosen[int(index)]}.{rest}"
        else:
            source = key
        assert torch.equal(value, teacher_state[source]), key
    # block 1 must not be the teacher's block 1 (the layers differ at random init)
    assert not torch.equal(
        student.encoder.blocks[1].attn.qkv.weight, teacher.encoder.blocks[1].attn.qkv.weight
    )


@pytest.mark.parametrize("soft_targets", ["masked", "all"])
@pytest.mark.parametrize("cosine_layers", ["last", "aligned"])
def test_kl_and_cosine_vanish_for_a_copy_and_are_positive_otherwise(soft_targets, cosine_layers):
    """Catches a KL with swapped/unsoftened terms or a cosine term that is not 1 - cos (neither is 0 at equality)."""
    cfg = {**DISTILL, "soft_targets": soft_targets, "cosine_layers": cosine_layers}
    teacher = teacher_of(
        2, init_std=0.2
    )  # sharper logits than init_std 0.02, so the terms are well above noise
    ids, labels = batch()
    same = Distiller(copy.deepcopy(teacher), teacher, cfg, pad_id=0)(ids, labels)
    assert float(same["kl_loss"]) == pytest.approx(0.0, abs=1e-6)
    assert float(same["cosine_loss"]) == pytest.approx(0.0, abs=1e-6)
    assert float(same["mlm_loss"]) > 1.0  # a random model: about ln(VOCAB)
    assert float(same["loss"].detach()) == pytest.approx(2.0 * float(same["mlm_loss"]), rel=1e-5)
    student = init_student(teacher, student_arch(teacher.arch, 1, None))
    other = Distiller(student, teacher, cfg, pad_id=0)(ids, labels)
    assert float(other["kl_loss"]) > 1e-3 and float(other["cosine_loss"]) > 1e-3


def test_teacher_gets_no_gradient_and_stays_out_of_state_and_parameters():
    """Catches a teacher registered as a submodule: it would be optimized, checkpointed and exported."""
    teacher = teacher_of(2)
    distiller = Distiller(init_student(teacher, student_arch(teacher.arch, 1, None)), teacher, DISTILL)
    distiller.train()
    distiller(*batch())["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    assert all(key.startswith("student.") for key in distiller.state_dict())
    assert {id(p) for p in distiller.parameters()} == {id(p) for p in distiller.student.parameters()}


def test_soft_targets_all_also_learns_from_unmasked_positions():
    """Catches soft_targets=all silently acting like masked (the KL must change when unmasked logits do)."""
    teacher = teacher_of(2)
    student = init_student(teacher, student_arch(teacher.arch, 1, None))
    ids, labels = batch()
    none_masked_but_one = torch.full_like(labels, -100)
    none_masked_but_one[0, 0] = ids[0, 0]
    masked = Distiller(student, teacher, DISTILL)(ids, none_masked_but_one)["kl_loss"]
    everywhere = Distiller(student, teacher, {**DISTILL, "soft_targets": "all"})(ids, none_masked_but_one)
    assert float(everywhere["kl_loss"]) != pytest.approx(float(masked))


@pytest.mark.parametrize(
    "layers, hidden, message",
    [
        (0, None, "student.num_layers=0"),
        (4, None, "student.num_layers=4"),
        (5, None, "fewer than the teacher's 4"),
        (2, 64, "student.hidden_size=64 differs from the teacher's hidden_size=128"),
    ],
)
def test_bad_student_shapes_are_refused(layers, hidden, message):
    with pytest.raises(ValueError, match=message):
        student_arch(teacher_of(4).arch, layers, hidden)


def test_default_student_is_half_the_teacher():
    assert student_arch(teacher_of(4).arch, None, None)["num_layers"] == 2
    assert student_arch(teacher_of(3).arch, None, 128)["num_layers"] == 1


@pytest.mark.parametrize(
    "key, value", [("alpha_ce", -1.0), ("temperature", 0.0), ("soft_targets", "some"), ("cosine_layers", "x")]
)
def test_bad_distill_settings_are_refused(key, value):
    with pytest.raises(ValueError, match=f"distill.{key}="):
        check_distill_config({**DISTILL, key: value})


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_corpus):
    """A tiny MLM export, a classifier fine-tuned from it, and a tokenizer of another vocabulary."""
    root = tmp_path_factory.mktemp("exports")
    tok = train_tokenizer(tiny_corpus["train"])
    torch.manual_seed(0)
    mlm = save_export(BertForMLM(tiny_arch(), tok.get_vocab_size()), tok, root / "run" / "model")
    classifier = build_tiny_classifier(mlm, root / "classifier", ["neg", "pos"])
    return {"mlm": mlm, "classifier": classifier, "tok": tok, "root": root}


def test_teacher_must_be_an_mlm_export(exports):
    """Catches a classifier or a random folder reaching the loader (a key error deep in init_student)."""
    assert check_teacher(exports["mlm"])["task"] == "mlm"
    with pytest.raises(ValueError, match="fine-tuned classifier .2 labels.*not a masked-language-model"):
        check_teacher(exports["classifier"])
    with pytest.raises(ValueError, match="missing config.json, model.safetensors, tokenizer.json"):
        check_teacher(exports["root"])
    with pytest.raises(ValueError, match="is a run folder; pass its export"):
        check_teacher(exports["mlm"].parent)  # outputs/RUN instead of outputs/RUN/model
    with pytest.raises(ValueError, match="is not a folder"):
        check_teacher(exports["root"] / "nope")


def test_corpus_with_another_vocabulary_is_refused(exports, tiny_corpus):
    """Catches a student trained on ids of another tokenizer (its soft targets would be meaningless)."""
    # the data pipeline loads data.tokenizer.path and attaches its own post-processor: still the same
    reloaded = Tokenizer.from_str(exports["tok"].to_str())
    attach_post_processor(reloaded)
    check_same_vocabulary(exports["tok"], reloaded, "T")
    other = train_tokenizer(tiny_corpus["train"], vocab_size=1500)
    with pytest.raises(ValueError, match="another tokenizer than the teacher's .its vocabulary differs"):
        check_same_vocabulary(exports["tok"], other, "T")
    lower = Tokenizer.from_str(exports["tok"].to_str())
    lower.normalizer = normalizers.BertNormalizer(lowercase=False)
    with pytest.raises(ValueError, match="its normalizer differs"):
        check_same_vocabulary(exports["tok"], lower, "T")


def test_cli_bad_teacher_exits_with_one_clear_error(exports, tmp_path, capsys):
    """Catches a traceback (or a started run) instead of exit 2 naming what the teacher folder holds."""
    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        for teacher, message in [
            (exports["classifier"], "fine-tuned classifier"),
            (exports["root"], "not an exported cramming model"),
        ]:
            cfg = compose("distill", overrides=[f"teacher={teacher}", f"base_dir={tmp_path}", "name=bad"])
            with pytest.raises(SystemExit) as exit_info:
                distill_main(cfg)
            assert exit_info.value.code == 2
            assert message in capsys.readouterr().err
        cfg = compose("distill", overrides=[f"base_dir={tmp_path}", "name=bad"])
        with pytest.raises(SystemExit):
            distill_main(cfg)
        assert "teacher= is required" in capsys.readouterr().err
        cfg = compose("distill", overrides=[f"teacher={exports['mlm']}", "student.num_layers=2", "name=bad"])
        with pytest.raises(SystemExit):
            distill_main(cfg)
        assert "student.num_layers=2" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_bench_inference_writes_teacher_and_student_side_by_side(exports, tmp_path):
    """Catches the benchmark swapping or dropping a model, or not writing its JSON and Markdown."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_inference

    teacher = load_model(exports["mlm"])
    student = init_student(teacher, student_arch(teacher.arch, 1, None))
    save_export(student, exports["tok"], tmp_path / "student")
    args = ["--teacher", str(exports["mlm"]), "--student", str(tmp_path / "student"), "--devices", "cpu"]
    args += ["--batch", "2", "--seq-len", "16", "--repeats", "1", "--warmup", "0", "--rounds", "1"]
    result = bench_inference.main(
        [*args, "--out", str(tmp_path / "out"), "--name", "t", "--kernels", "torch"]
    )
    models = result["models"]
    assert (models["teacher"]["layers"], models["student"]["layers"]) == (2, 1)
    assert models["student"]["parameters"] < models["teacher"]["parameters"]
    assert models["student"]["export_bytes"] < models["teacher"]["export_bytes"]
    assert set(result["timings"]["cpu"]) == {"teacher", "student"}
    saved = json.loads((tmp_path / "out" / "inference_t.json").read_text())
    assert saved["parameter_ratio"] == pytest.approx(result["parameter_ratio"])
    table = (tmp_path / "out" / "inference_t.md").read_text()
    assert "| cpu (float32) | student | 1 |" in table and "| cpu (float32) | teacher | 2 |" in table


# -- the loss terms against values computed by hand ------------------------------------------------------
def test_soft_target_loss_is_t_squared_kl_teacher_to_student_on_hand_built_logits():
    """Catches a dropped T², an unsoftened (T=1) softmax, KL in the wrong direction, or a sum instead of a
    mean over positions: two positions whose KL is known in closed form."""
    t = 2.0
    # position 0: teacher softmax(z/T) = (3/4, 1/4), student (1/2, 1/2); position 1: both (1/2, 1/2)
    teacher = torch.tensor([[2 * math.log(3.0), 0.0], [0.0, 0.0]])
    student = torch.zeros(2, 2)
    kl_t_s = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(teacher ‖ student), 0.1308
    kl_s_t = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # the swapped direction, 0.1438
    want = t * t * kl_t_s / 2  # mean over the 2 positions
    got = float(soft_target_loss(student, teacher, t))
    assert got == pytest.approx(want, rel=1e-6)
    assert got != pytest.approx(t * t * kl_s_t / 2, rel=1e-3)  # not KL(student ‖ teacher)
    assert got != pytest.approx(kl_t_s / 2, rel=1e-3)  # not without T²
    # unsoftened: softmax(teacher) = (9/10, 1/10) would give another value
    kl_unsoftened = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert got != pytest.approx(t * t * kl_unsoftened / 2, rel=1e-3)


def test_cosine_loss_is_one_minus_cosine_averaged_over_rows():
    """Catches 1 + cos, cos alone, or a sum over rows: rows at 45° and 90° give (1 - 1/√2 + 1) / 2."""
    student = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    teacher = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    assert float(cosine_loss(student, teacher)) == pytest.approx((1 - 1 / math.sqrt(2) + 1.0) / 2, rel=1e-6)


def independent_terms(student, teacher, ids, labels, temperature: float, where: str) -> dict[str, float]:
    """KL·T², CE and 1 - cos from the two models' own forward passes, written out without the Distiller."""
    with torch.no_grad():
        s_logits, t_logits = student(ids)["logits"], teacher(ids)["logits"]  # (B, T, V)
        s_hidden, t_hidden = student.encoder(ids), teacher.encoder(ids)  # (B, T, H)
    masked = labels != -100  # (B, T)
    rows = masked if where == "masked" else torch.ones_like(masked)
    log_ps = torch.log_softmax(s_logits[rows].double() / temperature, -1)
    pt = torch.softmax(t_logits[rows].double() / temperature, -1)
    kl = float((pt * (pt.log() - log_ps)).sum(-1).mean()) * temperature**2
    log_p = torch.log_softmax(s_logits[masked].double(), -1)
    ce = float(-log_p.gather(1, labels[masked].unsqueeze(1)).mean())
    s, t = (
        s_hidden.reshape(-1, s_hidden.shape[-1]).double(),
        t_hidden.reshape(-1, t_hidden.shape[-1]).double(),
    )
    cos = float((1 - (s * t).sum(-1) / (s.norm(dim=-1) * t.norm(dim=-1))).mean())
    return {"kl": kl, "ce": ce, "cos": cos}


@pytest.mark.parametrize("soft_targets", ["masked", "all"])
@pytest.mark.parametrize("weights", [(5.0, 2.0, 1.0), (0.3, 1.7, 4.0)])
def test_distiller_total_is_the_weighted_sum_of_independently_computed_terms(soft_targets, weights):
    """Catches any dropped or swapped term or weight, a missing T², the KL on the wrong positions, or the
    MLM loss on unmasked ones: student != teacher, every term computed here from the models themselves."""
    alpha_ce, alpha_mlm, alpha_cos = weights
    cfg = {**DISTILL, "alpha_ce": alpha_ce, "alpha_mlm": alpha_mlm, "alpha_cos": alpha_cos,
           "temperature": 3.0, "soft_targets": soft_targets}  # fmt: skip
    teacher = teacher_of(2, init_std=0.2)
    torch.manual_seed(5)
    student = BertForMLM({**teacher.arch, "num_layers": 1}, VOCAB).eval()  # unrelated weights
    ids, labels = batch()
    out = Distiller(student, teacher, cfg)(ids, labels)
    want = independent_terms(student, teacher, ids, labels, 3.0, soft_targets)
    assert min(want.values()) > 1e-3  # every term is non-trivial, so dropping one shows
    assert float(out["kl_loss"]) == pytest.approx(want["kl"], rel=1e-4)
    assert float(out["mlm_loss"]) == pytest.approx(want["ce"], rel=1e-4)
    assert float(out["cosine_loss"]) == pytest.approx(want["cos"], rel=1e-4)
    total = alpha_ce * want["kl"] + alpha_mlm * want["ce"] + alpha_cos * want["cos"]
    assert float(out["loss"].detach()) == pytest.approx(total, rel=1e-4)


# -- defaults: the train recipe follows the teacher, distill.recipe=distilbert ----------------------------
def compose_distill(args: list[str]):
    with initialize_config_dir(config_dir=CONF_PATH, version_base="1.3"):
        return compose("distill", overrides=distill_overrides(args))


def test_default_train_recipe_is_the_teachers_arch_recipe(exports, monkeypatch):
    """Catches a tiny teacher's student getting bert-o4 (a batch ramp to 8192) instead of train=tiny."""
    teacher = exports["mlm"]
    assert teacher_train_recipe({"arch": {"name": "tiny-student1L-student1L"}}) == "tiny"
    assert teacher_train_recipe({"arch": {"name": "crammed-bert"}}) == "crammed-bert"
    assert "train=tiny" in distill_overrides([f"teacher={teacher}"])
    cfg = compose_distill([f"teacher={teacher}"])
    tiny = compose_distill([f"teacher={teacher}", "train=tiny"])
    assert cfg.train == tiny.train and cfg.train.batch_size == 64  # train=tiny is train=cpu's 64, not 8192
    assert (
        compose_distill([f"teacher={teacher}", "train=bert-o4"]).train.batch_size == 8192
    )  # an explicit choice wins
    assert compose_distill([f"teacher={teacher}", "train.batch_size=32"]).train.batch_size == 32
    seen = {}  # the CLI entry point applies the same defaults to sys.argv
    monkeypatch.setattr(distill_cli, "run_app", lambda app: seen.update(argv=list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["cramming.distill", f"teacher={teacher}", "budget=1steps"])
    distill_cli.main()
    assert seen["argv"] == ["cramming.distill", "train=tiny", f"teacher={teacher}", "budget=1steps"]


def test_distilbert_recipe_switch_sets_the_released_settings_and_user_overrides_win(exports):
    """Catches distill.recipe=distilbert leaving any of DistilBERT's settings at this project's values, or
    overriding what the user set on the command line."""
    cfg = compose_distill([f"teacher={exports['mlm']}", "distill.recipe=distilbert"])
    assert cfg.distill.soft_targets == "all" and cfg.data.mlm_probability == 0.15
    assert (cfg.train.optimizer, cfg.train.lr, list(cfg.train.betas), cfg.train.eps) == (
        "adamw",
        5e-4,
        [0.9, 0.98],
        1e-6,
    )
    assert (cfg.train.weight_decay, cfg.train.grad_clip, cfg.train.schedule) == (0.0, 5.0, "budget-linear")
    assert (cfg.train.warmup_fraction, cfg.train.batch_ramp_fraction) == (0.05, 0.0)
    default = compose_distill([f"teacher={exports['mlm']}"])
    assert default.distill.recipe == "crammed" and default.distill.soft_targets == "masked"
    assert default.data.mlm_probability == 0.4 and default.train.lr == 2e-3  # the tiny teacher's CPU recipe
    mine = compose_distill([f"teacher={exports['mlm']}", "distill.recipe=distilbert", "train.lr=1e-3"])
    assert mine.train.lr == 1e-3 and mine.distill.soft_targets == "all"
    with pytest.raises(ValueError, match="distill.recipe='distil' is not one of"):
        check_distill_config({**DISTILL, "recipe": "distil"})
