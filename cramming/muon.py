"""``train.optimizer=muon``: Muon for the encoder's hidden matrices, AdamW for everything else.

Muon (orthogonalised momentum, ``torch.optim.Muon``) takes only 2-D parameters and is meant for the
hidden layers: the attention QKV and output projections and the feed-forward matrices of every
block. Embeddings (the tied decoder with them), the MLM prediction head, norms, biases and scalars
stay with AdamW, as in Keller Jordan's and Moonshot AI's recipes.

The two optimizers are stepped as one (:class:`MuonAdamW`): the loop sets one learning rate on
every ``param_groups`` entry and the Muon groups scale it by their ``lr_ratio``
(``train.muon.lr / train.lr``) at the step, so the schedule, the LR reductions after non-finite
steps, clipping (over all gradients), the GradScaler, checkpoints and DDP see one optimizer.
With ``adjust_lr=match_rms_adamw`` (Moonshot: the update is scaled by 0.2·sqrt(max(A, B)), giving
it AdamW's typical RMS of ~0.2) AdamW's peak LR and weight decay carry over unchanged.

The fused QKV matrix is orthogonalised as three (C, C) blocks (``split_qkv``, as Keller Jordan
advises: Q, K and V are separate matrices); orthogonalised whole, V's gradient dominates at
initialisation and Q and K get updates ~3x smaller.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz  # torch's own Muon numerics

ADJUST_LR = ("match_rms_adamw", "original")
DEFAULTS = {
    "lr": None,
    "momentum": 0.95,
    "nesterov": True,
    "ns_steps": 5,
    "adjust_lr": "match_rms_adamw",
    "weight_decay": None,
    "split_qkv": True,
}
QKV = ".attn.qkv.weight"  # (3C, C): Q, K and V stacked by rows


def is_hidden_matrix(name: str, param: torch.nn.Parameter) -> bool:
    """A 2-D weight inside a transformer block (``encoder.blocks.N.attn.qkv.weight``, ...)."""
    return param.ndim == 2 and ".blocks." in f".{name}"


def split_params(model: torch.nn.Module) -> tuple[list, list]:
    """(Muon's hidden matrices, AdamW's rest) as (name, parameter) pairs; each trainable parameter
    in exactly one list, a tied weight once."""
    hidden, rest, seen = [], [], set()
    for name, param in model.named_parameters():  # named_parameters yields a tied weight once
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (hidden.append((name, param)) if is_hidden_matrix(name, param) else rest.append((name, param)))
    return hidden, rest


def muon_settings(train: Mapping) -> dict:
    """``train.muon`` with its defaults filled in (``lr`` and ``weight_decay`` default to AdamW's)."""
    given = dict(train.get("muon") or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"train.muon has unknown key(s) {unknown}; known keys: {list(DEFAULTS)}")
    settings = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    settings["lr"] = float(train["lr"] if settings["lr"] is None else settings["lr"])
    settings["weight_decay"] = float(
        train["weight_decay"] if settings["weight_decay"] is None else settings["weight_decay"]
    )
    if settings["adjust_lr"] not in ADJUST_LR:
        raise ValueError(f"train.muon.adjust_lr={settings['adjust_lr']!r} is not one of {list(ADJUST_LR)}")
    if not settings["lr"] > 0:
        raise ValueError(f"train.muon.lr={settings['lr']!r} must be positive (null = train.lr)")
    if not 0.0 <= float(settings["momentum"]) < 1.0:
        raise ValueError(f"train.muon.momentum={settings['momentum']!r} must lie in [0, 1)")
    steps = settings["ns_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps < 100:
        raise ValueError(f"train.muon.ns_steps={steps!r} must be a whole number in [1, 99]")
    for key in ("nesterov", "split_qkv"):
        if not isinstance(settings[key], bool):
            raise ValueError(f"train.muon.{key}={settings[key]!r} must be true or false")
    if settings["weight_decay"] < 0:
        raise ValueError(f"train.muon.weight_decay={settings['weight_decay']!r} must be >= 0")
    return settings


class SplitMuon(torch.optim.Muon):
    """``torch.optim.Muon`` with two group options: ``splits`` (n: the update of each parameter is
    orthogonalised as n row blocks, each with its own shape adjustment) and ``lr_ratio`` (the LR the
    group steps with, relative to the one the loop sets). With both at 1 the step is torch's."""

    @torch.no_grad()
    def step(self, closure=None) -> None:
        if closure is not None:
            raise ValueError("Muon.step takes no closure here")
        for group in self.param_groups:
            lr = group["lr"] * group.get("lr_ratio", 1.0)
            momentum, splits = group["momentum"], group.get("splits", 1)
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param.grad)
                buffer = state["momentum_buffer"]
                buffer.lerp_(param.grad, 1 - momentum)
                update = param.grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                param.mul_(1 - lr * group["weight_decay"])
                for rows, block in zip(param.chunk(splits), update.chunk(splits)):  # views of param
                    ortho = _zeropower_via_newtonschulz(
                        block, group["ns_coefficients"], group["ns_steps"], group["eps"]
                    )
                    rows.add_(ortho, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], block.shape))


class MuonAdamW:
    """Muon and AdamW stepped as one optimizer (the interface the training loop uses).

    ``param_groups`` lists AdamW's groups, then Muon's; setting ``group["lr"]`` on each sets the
    schedule's LR, which Muon's groups multiply by their ``lr_ratio`` inside their step.
    """

    def __init__(self, muon: SplitMuon, adamw: torch.optim.Optimizer):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict]:
        return self.adamw.param_groups + self.muon.param_groups

    def step(self, closure=None) -> None:
        if closure is not None:
            raise ValueError("MuonAdamW.step takes no closure")
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adamw.zero_grad(set_to_none=set_to_none)
        self.muon.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: Mapping) -> None:
        if set(state) != {"muon", "adamw"}:
            raise ValueError(
                "the optimizer state to load is not a Muon+AdamW state (it has keys "
                f"{sorted(state)}): it was saved with another train.optimizer than train.optimizer=muon"
            )
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def build_muon_adamw(model: torch.nn.Module, train: Mapping, adamw_builder) -> MuonAdamW:
    """Muon over the hidden matrices and ``adamw_builder(parameters)`` (a list) over the rest."""
    settings = muon_settings(train)
    hidden, rest = split_params(model)
    if not hidden:
        raise ValueError("train.optimizer=muon: the model has no 2-D weights inside transformer blocks")
    ratio, splits = settings["lr"] / float(train["lr"]), 3 if settings["split_qkv"] else 1
    qkv = [param for name, param in hidden if name.endswith(QKV)]
    other = [param for name, param in hidden if not name.endswith(QKV)]
    groups = [{"params": qkv, "splits": splits, "lr_ratio": ratio}, {"params": other, "lr_ratio": ratio}]
    muon = SplitMuon(
        [group for group in groups if group["params"]],
        lr=float(train["lr"]),
        weight_decay=settings["weight_decay"],
        momentum=float(settings["momentum"]),
        nesterov=bool(settings["nesterov"]),
        ns_steps=int(settings["ns_steps"]),
        adjust_lr_fn=settings["adjust_lr"],
    )
    return MuonAdamW(muon, adamw_builder([param for _, param in rest]))
