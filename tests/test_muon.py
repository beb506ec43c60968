"""train.optimizer=muon: Muon for the blocks' hidden matrices, AdamW for the rest, as one optimizer."""

import io
from pathlib import Path

import pytest
import torch

from cramming.conf import read_yaml
from cramming.config import ConfigError, check_group
from cramming.data import MLMCollator
from cramming.kernels import dispatch as ops
from cramming.models import build_mlm, count_parameters
from cramming.muon import MuonAdamW, split_params
from cramming.optim import build_optimizer, implementation_of
from cramming.runtime import Runtime
from cramming.train import optimizer_step

REPO_ROOT = Path(__file__).resolve().parents[1]
VOCAB, T = 256, 16
SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
TRAIN = read_yaml("train", "bert-o4.yaml")
MUON = {**TRAIN, "optimizer": "muon"}
CPU = torch.device("cpu")


def tiny_arch(**changes) -> dict:
    arch = read_yaml("arch", "tiny.yaml")
    return {**arch, "hidden_size": 32, "intermediate_size": 128, **changes}


@pytest.fixture(autouse=True)
def torch_ops():
    ops.configure({"kernels": "torch"})  # the Triton interpreter is far too slow for training steps
    yield
    ops.configure({"kernels": "auto"})


def batches(n: int, size: int = 2, seed: int = 0) -> list[dict]:
    """MLMCollator batches: exactly k masked tokens per sequence, so microbatch means average exactly."""
    collate, g = MLMCollator(VOCAB, SPECIAL), torch.Generator().manual_seed(seed)
    return [collate(torch.randint(5, VOCAB, (size, T), generator=g), generator=g) for _ in range(n)]


def model_and_optimizer(train=MUON, seed: int = 0, **arch):
    torch.manual_seed(seed)
    model = build_mlm(tiny_arch(**arch), VOCAB)
    return model, build_optimizer(model, train, CPU)


def steps(model, optimizer, stream: list[dict], accum: int = 1, lr: float = 1e-3) -> list[float]:
    it, runtime, losses = iter(stream), Runtime(CPU, torch.float32), []
    for _ in range(len(stream) // accum):
        loss, _, finite = optimizer_step(model, optimizer, lambda: next(it), accum, lr, 0.5, runtime)
        assert finite
        losses.append(float(loss))
    return losses


def test_partition_puts_hidden_matrices_in_muon_and_every_parameter_in_one_group():
    """Catches embeddings, the decoder/prediction head or a norm handed to Muon (it orthogonalises
    them, and rejects 1-D weights), a parameter left out of both optimizers, or the tied
    decoder/embedding matrix stepped twice."""
    model, optimizer = model_and_optimizer(prediction_head=True)
    assert isinstance(optimizer, MuonAdamW)
    muon = [p for g in optimizer.muon.param_groups for p in g["params"]]
    adamw = [p for g in optimizer.adamw.param_groups for p in g["params"]]
    every = muon + adamw
    assert len({id(p) for p in every}) == len(every)  # nothing twice
    assert sum(p.numel() for p in every) == count_parameters(model)  # nothing missed
    names = {id(p): n for n, p in model.named_parameters()}
    hidden = sorted(names[id(p)] for p in muon)
    expected = sorted(
        f"encoder.blocks.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.qkv", "attn.out", "ffn.inp", "ffn.out")
    )
    assert hidden == expected
    for name in ("encoder.embeddings.word.weight", "head.dense.weight", "encoder.final_norm.weight"):
        assert any(p is model.get_parameter(name) for p in adamw), name
    decay = optimizer.adamw.param_groups[0]
    assert decay["weight_decay"] == TRAIN["weight_decay"] and all(p.ndim == 2 for p in decay["params"])
    assert optimizer.muon.param_groups[0]["weight_decay"] == TRAIN["weight_decay"]
    assert implementation_of(optimizer) == "fused"  # AdamW's part keeps the fused CPU implementation


def test_a_few_muon_steps_lower_the_loss():
    """Catches a Muon update that does not descend (wrong sign, a zero LR from a bad ratio, or
    parameters the optimizer never sees)."""
    model, optimizer = model_and_optimizer()
    stream = batches(1) * 8  # the same batch: the loss must fall
    losses = steps(model, optimizer, stream, lr=3e-3)
    assert losses[-1] < losses[0] - 0.1, losses


def one_update(train: dict, lr: float = 1e-3) -> dict[str, torch.Tensor]:
    """The change one step makes to each parameter, from full-rank random gradients."""
    model, optimizer = model_and_optimizer({**train, "weight_decay": 0.0})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    for param in model.parameters():
        param.grad = torch.randn(param.shape, generator=g)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    assert [group["lr"] for group in optimizer.param_groups] == [lr] * len(optimizer.param_groups)
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


def rms(t: torch.Tensor) -> float:
    return float(t.pow(2).mean().sqrt())


def test_update_rms_matches_adamw_scale_and_muon_lr_scales_only_muon():
    """Catches adjust_lr left at torch's default ('original': ~sqrt(3/(0.04*96)) = 0.9x here, and far
    smaller at width 768, so AdamW's LR no longer carries over), a train.muon.lr ratio applied to
    AdamW's parameters, or one left in the group's lr so the next step applies it twice."""
    one = one_update(MUON)
    two = one_update({**MUON, "muon": {**TRAIN["muon"], "lr": 2e-3}})
    for name in ("encoder.blocks.0.attn.out.weight", "encoder.blocks.1.ffn.inp.weight"):
        assert 0.15 < rms(one[name]) / 1e-3 < 0.25, name  # Moonshot: 0.2 x LR, AdamW's typical update RMS
        torch.testing.assert_close(two[name], 2 * one[name])
    word = "encoder.embeddings.word.weight"
    torch.testing.assert_close(two[word], one[word])
    assert 0.5 < rms(one[word]) / 1e-3 < 1.5  # AdamW's first step: ~lr per element


def qkv_update_sizes(split: bool) -> list[float]:
    # the scaled sinusoid the figures below were measured on (rotary reshapes Q's and K's gradients)
    train = {**MUON, "muon": {**TRAIN["muon"], "split_qkv": split}}
    model, optimizer = model_and_optimizer(train, position_embedding="scaled-sinusoidal")
    before = model.encoder.blocks[0].attn.qkv.weight.detach().clone()
    steps(model, optimizer, batches(1, size=8))
    parts = (model.encoder.blocks[0].attn.qkv.weight.detach() - before).chunk(3)  # Q, K, V rows
    return [rms(part) for part in parts]


def test_split_qkv_gives_q_k_and_v_updates_of_the_same_scale():
    """Catches the fused QKV matrix orthogonalised whole: V's larger gradient then takes the update
    and Q and K move ~2-3x less than V (measured here at initialisation on a real batch: whole
    0.06/0.07/0.17 x LR, split 0.12/0.13/0.10)."""
    split, whole = qkv_update_sizes(True), qkv_update_sizes(False)
    assert max(split) / min(split) < 1.6, split
    assert max(whole) / min(whole) > 2.0, whole  # what the split is there to fix


def test_split_muon_without_splits_is_torchs_muon():
    """Catches the re-implemented step drifting from torch.optim.Muon (momentum, Nesterov, decoupled
    decay or the shape adjustment): with splits=1 and lr_ratio=1 both must give the same weights."""
    from cramming.muon import SplitMuon

    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(48, 16)), torch.nn.Parameter(torch.randn(16, 40))]
    copies = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    settings = {"lr": 0.02, "weight_decay": 0.1, "adjust_lr_fn": "match_rms_adamw"}
    ours, theirs = SplitMuon(weights, **settings), torch.optim.Muon(copies, **settings)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        for w, c in zip(weights, copies):
            w.grad = torch.randn(w.shape, generator=g)
            c.grad = w.grad.clone()
        ours.step()
        theirs.step()
    for w, c in zip(weights, copies):
        torch.testing.assert_close(w, c, rtol=0, atol=0)


def test_gradient_accumulation_gives_the_same_step_as_one_big_batch():
    """Catches Muon's momentum or orthogonalisation run once per microbatch instead of once per step,
    or gradients of a microbatch dropped."""
    big = batches(1, size=4)[0]
    halves = [{k: v[:2] for k, v in big.items()}, {k: v[2:] for k, v in big.items()}]
    model_a, opt_a = model_and_optimizer()
    model_b, opt_b = model_and_optimizer()
    initial = {n: p.detach().clone() for n, p in model_a.named_parameters()}
    steps(model_a, opt_a, [big])
    steps(model_b, opt_b, halves, accum=2)
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        change = (a - initial[name]).norm()  # bf16 Newton-Schulz: float-order noise of ~1% (see the DDP test)
        assert float((a - b).norm() / change) < 0.05, name


def test_saved_and_reloaded_state_gives_the_identical_next_step():
    """Catches Muon's momentum buffers (or AdamW's moments) missing from the checkpoint, a state the
    safe loader (weights_only) refuses, or the two halves loaded into the wrong optimizer."""
    stream = batches(4)
    model, optimizer = model_and_optimizer()
    steps(model, optimizer, stream[:3])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    steps(model, optimizer, stream[3:])
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed, fresh = model_and_optimizer(seed=1)
    resumed.load_state_dict(saved["model"])
    fresh.load_state_dict(saved["optimizer"])
    assert len(fresh.muon.state) == 8 and len(fresh.adamw.state) > 0
    steps(resumed, fresh, stream[3:])
    for (name, a), b in zip(model.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_state_of_another_optimizer_is_refused_by_name():
    """Catches resuming a train.optimizer=adamw checkpoint as Muon with a bare KeyError (or silently)."""
    _, adamw = model_and_optimizer(TRAIN)
    _, muon = model_and_optimizer()
    with pytest.raises(ValueError, match="train.optimizer=muon"):
        muon.load_state_dict(adamw.state_dict())


def test_split_gives_muon_nothing_outside_the_blocks():
    """Catches a rule on shape alone (ndim == 2), which would hand the embeddings to Muon."""
    model = build_mlm(tiny_arch(), VOCAB)
    hidden, rest = split_params(model)
    assert all(p.ndim == 2 for _, p in hidden) and any(p.ndim == 2 for _, p in rest)
    assert all(".blocks." not in name for name, _ in rest if model.get_parameter(name).ndim == 2)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"optimizer": "sgd"}, r"train.optimizer='sgd'.*'adamw', 'muon'"),
        ({"muon": {"adjust_lr": "keller"}}, r"train.muon.adjust_lr='keller'.*match_rms_adamw"),
        ({"muon": {"momentum": 1.5}}, r"train.muon.momentum=1.5"),
        ({"muon": {"ns_steps": 0}}, r"train.muon.ns_steps=0"),
        ({"muon": {"split_qkv": "yes"}}, r"train.muon.split_qkv='yes'"),
        ({"muon": {"betas": 1}}, r"train.muon has unknown key.*betas"),
    ],
)
def test_bad_muon_settings_are_config_errors_naming_the_key(change, message):
    """Catches a bad value reaching torch.optim.Muon hours later (or never: an unknown key ignored)."""
    train = {**MUON, **change}
    if "muon" in change:
        train["muon"] = {**TRAIN["muon"], **change["muon"]}
    with pytest.raises(ConfigError, match=message):
        check_group("train", train)


def test_the_default_recipe_still_builds_plain_adamw():
    """Catches the new switch changing today's default: train.optimizer=adamw must stay one AdamW."""
    model, optimizer = model_and_optimizer(TRAIN)
    assert TRAIN["optimizer"] == "adamw" and type(optimizer) is torch.optim.AdamW
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_pretraining_with_muon_stops_and_resumes_like_an_uninterrupted_run(tiny_corpus, tmp_path):
    """The whole loop with train.optimizer=muon: batch ramp (accumulation 1 -> 2), clipping, checkpoint
    and resume. Catches Muon's state missing from the run's checkpoint or refused by its safe loader,
    and the loop's LR schedule not reaching the Muon groups (the logged LRs would still agree)."""
    from test_resume import overrides, run_in_process, train_curve, weights

    def run(name: str, *extra: str) -> dict:
        args = overrides(tiny_corpus, tmp_path, name, "train.optimizer=muon", *extra, budget="6steps")
        return run_in_process(args)

    assert run("full")["finished"]
    assert not run("part", "train.stop_after_steps=3")["finished"]
    assert run("part", "train.stop_after_steps=3", "resume=true")["finished"]
    full, part = tmp_path / "outputs" / "full", tmp_path / "outputs" / "part"
    assert train_curve(part) == train_curve(full)
    mine, theirs = weights(part), weights(full)
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=0, msg=key)
    state = torch.load(part / "checkpoints" / "step_00000006.pt", weights_only=True)
    assert set(state["optimizer"]) == {"muon", "adamw"} and state["optimizer"]["muon"]["state"]


def test_grad_scaler_and_a_non_finite_step_handle_both_optimizers():
    """Catches the fp16 GradScaler unscaling only one half (AdamW's update would then be off by the
    scale) and a non-finite step that still moves Muon's weights or momentum."""
    b = batches(1)
    plain, plain_opt = model_and_optimizer()
    scaled, scaled_opt = model_and_optimizer()
    runtime = Runtime(CPU, torch.float32)
    steps(plain, plain_opt, b)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=True)
    _, _, finite = optimizer_step(scaled, scaled_opt, lambda: b[0], 1, 1e-3, 0.5, runtime, scaler=scaler)
    assert finite
    for (name, a), c in zip(plain.named_parameters(), scaled.parameters()):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=2e-5, msg=name)
    weights = {n: p.detach().clone() for n, p in scaled.named_parameters()}
    momentum = scaled_opt.muon.state[scaled.encoder.blocks[0].attn.out.weight]["momentum_buffer"].clone()
    _, _, finite = optimizer_step(scaled, scaled_opt, lambda: b[0], 1, 1e-3, 0.5, runtime, inject_nan=True)
    assert not finite
    for name, param in scaled.named_parameters():
        assert torch.equal(param, weights[name]), name
    assert torch.equal(
        scaled_opt.muon.state[scaled.encoder.blocks[0].attn.out.weight]["momentum_buffer"], momentum
    )


def muon_rank(rank: int, init_file: str, out: str) -> None:
    """tests/test_distributed.py's DDP worker (2 gloo ranks, accumulation 2) with train.optimizer=muon."""
    import test_distributed

    test_distributed.TRAIN = {**test_distributed.TRAIN, "optimizer": "muon"}
    test_distributed.worker(rank, init_file, out)


def test_two_ddp_ranks_with_muon_match_one_process(tmp_path):
    """Catches Muon under DDP stepping on a rank's own gradient (before the all-reduce) or ranks that
    drift apart: the update must be the one process's on the full batch. Muon's bf16 Newton-Schulz
    makes float-order noise visible: reordering the microbatches of one process moves its 2-step
    change by 0.6-1.7% (relative norm), stepping on one rank's half of the batch by 70-85%."""
    import test_distributed as td
    import torch.multiprocessing as mp

    out = tmp_path / "rank0.pt"
    mp.spawn(muon_rank, args=(str(tmp_path / "init"), str(out)), nprocs=td.WORLD, join=True)
    ddp = torch.load(out, weights_only=False)
    td.TRAIN = {**td.TRAIN, "optimizer": "muon"}
    try:
        initial = td.fresh_model().state_dict()
        model = td.fresh_model()
        losses = td.train(model, model, td.microbatches())
    finally:
        td.TRAIN = {**td.TRAIN, "optimizer": "adamw"}
    torch.testing.assert_close(torch.tensor(ddp["losses"]), torch.tensor(losses), rtol=1e-5, atol=1e-5)
    for key, value in model.state_dict().items():
        change = (value - initial[key]).norm()
        if change > 0:
            assert float((ddp["state"][key] - value).norm() / change) < 0.05, key
