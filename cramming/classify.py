"""The fine-tuning engine shared by GLUE and custom tasks: encode → train → predict.

    data = encode_examples(tokenizer, texts_a, texts_b, labels=[0, 1, ...], max_len=128)
    model = finetune(model, data, FinetuneConfig(lr=4e-5, epochs=5), seed=0, device="auto")
    logits = predict(model, dev_data, batch_size=64, device="auto")     # (N, num_labels), input order

Batches are padded per batch (never to max_len) and built from examples of similar length,
which is what makes fine-tuning on a CPU affordable. With ``compile=True`` (``impl.compile``, on
for GPUs) training batches are padded up to one of four bucket lengths instead, so the compiled
step sees a few shapes and compiles a few times, not once per length. Labels are class indices (int) for
classification and floats for regression (``num_labels == 1``); mapping label names to
indices is the caller's job (see ``cramming.glue.tasks``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tokenizers.processors import TemplateProcessing

from cramming.budget import cosine_with_warmup
from cramming.config.checks import COMPILE_MODES, check_precision
from cramming.optim import build_adamw
from cramming.runtime import (
    CompiledStep,
    Runtime,
    resolve_device,
    resolve_precision,
)

log = logging.getLogger(__name__)


@dataclass
class EncodedExamples:
    """Token ids of variable length (no padding), their segment ids, and optional labels."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray]
    labels: np.ndarray | None = None  # (N,) int64 class indices or float32 targets
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self))

    def select(self, indices: Sequence[int]) -> EncodedExamples:
        indices = [int(i) for i in indices]
        return EncodedExamples(
            [self.input_ids[i] for i in indices],
            [self.token_type_ids[i] for i in indices],
            None if self.labels is None else self.labels[indices],
            self.pad_id,
        )


def prepare_tokenizer(tokenizer: Tokenizer, max_len: int) -> Tokenizer:
    """A copy that truncates to ``max_len``, never pads, and adds [CLS] a [SEP] (b [SEP]).

    Exports from pretraining carry a BERT TemplateProcessing post-processor; one is added
    here for tokenizers without it, so sentence pairs are always encoded the same way.
    """
    tok = Tokenizer.from_str(tokenizer.to_str())
    if tok.post_processor is None:
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        if cls_id is None or sep_id is None:
            raise ValueError("the tokenizer has no post-processor and no [CLS]/[SEP] tokens to add")
        tok.post_processor = TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
    tok.no_padding()
    tok.enable_truncation(max_length=max_len, strategy="longest_first")
    return tok


def encode_examples(
    tokenizer: Tokenizer,
    texts_a: Sequence[str],
    texts_b: Sequence[str] | None = None,
    labels: Sequence | np.ndarray | None = None,
    max_len: int = 128,
    regression: bool = False,
) -> EncodedExamples:
    """Tokenize single sentences or sentence pairs; ``labels`` are class indices (floats if regression)."""
    if texts_b is not None and len(texts_b) != len(texts_a):
        raise ValueError(f"texts_a has {len(texts_a)} entries but texts_b has {len(texts_b)}")
    if labels is not None and len(labels) != len(texts_a):
        raise ValueError(f"texts_a has {len(texts_a)} entries but labels has {len(labels)}")
    tok = prepare_tokenizer(tokenizer, max_len)
    inputs = list(texts_a) if texts_b is None else list(zip(texts_a, texts_b))
    encodings = tok.encode_batch(inputs) if inputs else []
    pad_id = tok.token_to_id("[PAD]")
    if pad_id is None:  # a byte-level BPE tokenizer (recipe=roberta)
        pad_id = tok.token_to_id("<pad>")
    label_array = None
    if labels is not None:
        label_array = np.asarray(labels, dtype=np.float32 if regression else np.int64)
    return EncodedExamples(
        [np.asarray(e.ids, dtype=np.int64) for e in encodings],
        [np.asarray(e.type_ids, dtype=np.int64) for e in encodings],
        label_array,
        0 if pad_id is None else pad_id,
    )


REFERENCE_LR, REFERENCE_WIDTH = 4e-5, 768


def resolve_lr(lr: float | str, hidden_size: int) -> float:
    """``lr=auto``: the GLUE-sane 4e-5 for 768-wide models, scaled by 768 / hidden_size for others.

    Adam's best learning rate grows as models get narrower (about 1/width, as in muP); at the
    protocol's own width this is exactly 4e-5, while a 128-wide model gets 2.4e-4 instead of a
    step size too small to move it within a few epochs.
    """
    if lr == "auto":
        return REFERENCE_LR * REFERENCE_WIDTH / int(hidden_size)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr <= 1:
        raise ValueError(f"lr={lr!r} must be a number in (0, 1] or 'auto' (4e-5 x 768 / hidden_size)")
    return float(lr)


@dataclass
class FinetuneConfig:
    """GLUE-sane defaults: AdamW 4e-5, betas (0.9, 0.98), eps 1e-6, no weight decay, no gradient
    clipping (``grad_clip=0``), batch 16, 5 epochs, cosine with 10% warm-up."""

    lr: float = 4e-5
    batch_size: int = 16
    epochs: float = 5
    warmup_fraction: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float = 0.0  # max gradient norm; 0 = no clipping
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32
    log_every: int = 100  # steps between progress log lines (0 = only per epoch)
    compile: bool = False  # torch.compile the training step (impl.compile resolved; bucketed lengths)
    compile_mode: str = "default"  # one of runtime.COMPILE_MODES

    def __post_init__(self):
        if self.lr <= 0 or self.batch_size < 1 or self.epochs <= 0:
            raise ValueError(
                f"need lr > 0, batch_size >= 1 and epochs > 0; got lr={self.lr}, "
                f"batch_size={self.batch_size}, epochs={self.epochs}"
            )
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction={self.warmup_fraction} must be in [0, 1)")
        self.betas = check_optimizer_settings(self.betas, self.eps, self.weight_decay, self.grad_clip)
        check_precision(self.precision)
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode={self.compile_mode!r} is not one of {list(COMPILE_MODES)}")


def check_optimizer_settings(betas, eps, weight_decay, grad_clip) -> tuple[float, float]:
    """``betas`` as a pair of floats; a ValueError names a bad value and the accepted range."""
    if isinstance(betas, str) or len(betas) != 2 or not all(_number(b) and 0 <= b < 1 for b in betas):
        raise ValueError(f"betas={betas!r} must be two numbers in [0, 1), e.g. [0.9, 0.98]")
    for key, value, low in (("eps", eps, "> 0"), ("weight_decay", weight_decay, ">= 0"),
                            ("grad_clip", grad_clip, ">= 0 (0 = no clipping)")):  # fmt: skip
        if not _number(value) or value < 0 or (key == "eps" and value == 0):
            raise ValueError(f"{key}={value!r} must be a number {low}")
    return float(betas[0]), float(betas[1])


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finetune_config(settings: Mapping, hidden_size: int, runtime: Runtime) -> FinetuneConfig:
    """The ``FinetuneConfig`` of a GLUE or finetune settings mapping (keys of conf/glue.yaml), with the
    runtime's precision and compile choice."""
    return FinetuneConfig(
        lr=resolve_lr(settings["lr"], hidden_size),
        batch_size=int(settings["batch_size"]), epochs=settings["epochs"],
        warmup_fraction=settings["warmup_fraction"], weight_decay=settings["weight_decay"],
        betas=tuple(settings["betas"]), eps=settings["eps"], grad_clip=settings["grad_clip"],
        precision=runtime.precision, log_every=settings["log_every"],
        compile=runtime.compile, compile_mode=runtime.compile_mode,
    )  # fmt: skip


def autocast(device: torch.device, precision: str = "auto"):
    """Autocast by the one precision rule of ``runtime.resolve_precision`` (fp32: none)."""
    dtype = resolve_precision(precision, device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def length_batches(
    lengths: np.ndarray,
    batch_size: int,
    shuffle: bool,
    rng: np.random.Generator | None = None,
    bucket: int = 50,
) -> list[np.ndarray]:
    """Index batches of similar-length examples.

    Without shuffling: sorted longest first (inference; the caller restores the order).
    With shuffling: a random permutation is cut into chunks of ``bucket`` batches, each
    chunk sorted by length and cut into batches, and the batches shuffled, so padding stays
    small while every epoch sees a different order.
    """
    if not shuffle:
        order = np.argsort(-lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng = rng or np.random.default_rng()
    perm = rng.permutation(len(lengths))
    chunk = batch_size * bucket
    batches = []
    for start in range(0, len(perm), chunk):
        part = perm[start : start + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def bucket_lengths(longest: int, count: int = 4, multiple: int = 8) -> tuple[int, ...]:
    """``count`` padded lengths up to ``longest`` (rounded up to ``multiple``): 32, 64, 96, 128 for 128.

    Under torch.compile every batch shape is a compiled graph: with 4 lengths and 2 batch sizes
    (full batches and an epoch's one short batch) fine-tuning stays within Dynamo's default limit of
    8 graphs per function, where per-batch padding would recompile for nearly every length.
    """
    top = -(-max(1, longest) // multiple) * multiple
    return tuple(sorted({-(-top * i // count // multiple) * multiple for i in range(1, count + 1)}))


def collate(
    data: EncodedExamples, indices: np.ndarray, device: torch.device, buckets: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """Pad one batch to its own longest example, or to the smallest of ``buckets`` that holds it;
    attention_mask is 1 for real tokens (padding changes no result: padded keys are masked)."""
    width = max(len(data.input_ids[i]) for i in indices)
    if buckets:
        width = min((b for b in buckets if b >= width), default=width)
    ids = np.full((len(indices), width), data.pad_id, dtype=np.int64)  # (B, T)
    types = np.zeros((len(indices), width), dtype=np.int64)
    mask = np.zeros((len(indices), width), dtype=np.int64)
    for row, i in enumerate(indices):
        n = len(data.input_ids[i])
        ids[row, :n], types[row, :n], mask[row, :n] = data.input_ids[i], data.token_type_ids[i], 1
    batch = {
        "input_ids": torch.from_numpy(ids),
        "token_type_ids": torch.from_numpy(types),
        "attention_mask": torch.from_numpy(mask),
    }
    if data.labels is not None:
        batch["labels"] = torch.from_numpy(data.labels[indices])
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}


def finetune(
    model: torch.nn.Module,
    train_set: EncodedExamples,
    cfg: FinetuneConfig | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    class_weights: torch.Tensor | None = None,
) -> torch.nn.Module:
    """Train ``model`` (a BertForSequenceClassification) in place on ``train_set``; returns it.

    ``seed`` fixes the batch order and dropout. The model is moved to ``device``.
    """
    cfg = cfg or FinetuneConfig()
    if train_set.labels is None or len(train_set) == 0:
        raise ValueError("finetune needs a non-empty training set with labels")
    device = resolve_device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device).train()
    optimizer = build_adamw(
        model, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, device=device
    )
    lengths = train_set.lengths
    steps_per_epoch = len(length_batches(lengths, cfg.batch_size, True, np.random.default_rng(0)))
    total = max(1, round(cfg.epochs * steps_per_epoch))
    # Step s (0-based) runs at the pretraining budget-cosine schedule's value at p = s / total.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup(s / total, cfg.warmup_fraction)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    weights = class_weights.to(device) if class_weights is not None else None
    runtime = Runtime(device, resolve_precision(cfg.precision, device), compile=cfg.compile,
                      compile_mode=cfg.compile_mode)  # fmt: skip
    if cfg.compile:
        # GLUE fine-tunes many times in one process (tasks x seeds, each with its own short batch and
        # head): graphs of earlier runs would count against Dynamo's limit of 8 per function, past
        # which it silently runs eager. Inductor's cache makes compiling the same graphs again cheap.
        torch._dynamo.reset()
    compiled = CompiledStep(model, runtime, "fine-tuning step")
    buckets = bucket_lengths(int(lengths.max())) if cfg.compile else None

    def train_step(module: torch.nn.Module, next_batch) -> torch.Tensor:
        with autocast(device, cfg.precision):
            loss = module(**next_batch(), class_weights=weights)["loss"]
        scaler.scale(loss).backward()
        if cfg.grad_clip:  # GLUE-sane: none
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    step, started, running = 0, time.perf_counter(), []
    while step < total:
        for indices in length_batches(lengths, cfg.batch_size, True, rng):
            running.append(compiled.run(train_step, lambda: collate(train_set, indices, device, buckets)))  # noqa: B023
            scheduler.step()
            step += 1
            if step == total or (cfg.log_every and step % cfg.log_every == 0):
                mean = torch.stack(running).float().mean().item()
                log.info(
                    "step %d/%d | loss %.4f | lr %.2e | %.1fs",
                    step, total, mean, scheduler.get_last_lr()[0], time.perf_counter() - started,
                )  # fmt: skip
                running = []
            if step >= total:
                break
    model.eval()
    return model


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    dataset: EncodedExamples,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> np.ndarray:
    """Logits (N, num_labels) as float32, in the dataset's order (batches run sorted by length)."""
    device = resolve_device(device)
    was_training = model.training
    model.to(device).eval()
    num_labels = getattr(model, "num_labels", None)
    outputs: list[np.ndarray] = []
    order: list[np.ndarray] = []
    unlabelled = EncodedExamples(dataset.input_ids, dataset.token_type_ids, None, dataset.pad_id)
    for indices in length_batches(dataset.lengths, batch_size, shuffle=False):
        batch = collate(unlabelled, indices, device)
        with autocast(device, precision):
            logits = model(**batch)["logits"]
        outputs.append(logits.float().cpu().numpy())
        order.append(indices)
    model.train(was_training)
    if not outputs:
        return np.zeros((0, num_labels or 1), dtype=np.float32)
    result = np.empty((len(dataset), outputs[0].shape[1]), dtype=np.float32)
    result[np.concatenate(order)] = np.concatenate(outputs)
    return result


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from logits (N, C), numerically stable."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


@dataclass
class Pretrained:
    """An export read once for fine-tuning: its config.json, tokenizer and ``Encoder`` weights."""

    path: Path
    config: dict
    tokenizer: Tokenizer
    encoder: dict[str, torch.Tensor]  # keys of ``Encoder`` (no ``encoder.`` prefix)
    pooler: dict[str, torch.Tensor] | None = None  # BERT's pretrained pooler (recipe=bert with NSP)

    @property
    def arch(self) -> dict:
        return self.config["arch"]

    @property
    def recipe(self) -> str:
        """crammed | bert | roberta; BertForPreTraining exports (task ``pretraining``) are BERT-family."""
        recipe = (self.config.get("pretraining") or {}).get("recipe")
        return str(recipe or ("bert" if self.config.get("task") == "pretraining" else "crammed"))


def load_pretrained(model_dir: str | Path) -> Pretrained:
    """config.json (checked once), tokenizer and only the ``encoder.*`` weights of an export (MLM or
    classifier), plus a BERT export's pretrained pooler; the decoder or classifier head is never
    built. A ValueError names a bad file."""
    from safetensors import safe_open

    from cramming.export import WEIGHTS, read_config, read_tokenizer

    path = Path(model_dir)
    config = read_config(path)

    def tensors(f, names: set, aliases: dict, prefix: str) -> dict[str, torch.Tensor]:
        wanted = sorted(k for k in names | set(aliases) if k.startswith(prefix))
        return {k[len(prefix) :]: f.get_tensor(aliases.get(k, k)) for k in wanted}

    try:
        with safe_open(str(path / WEIGHTS), "pt") as f:
            names = set(f.keys())
            # save_model stores a tied weight once and records the dropped name -> kept name in metadata
            aliases = {k: v for k, v in (f.metadata() or {}).items() if v in names}
            encoder = tensors(f, names, aliases, "encoder.")
            # BERT fine-tunes its pretrained pooler; a classifier export's pooler is a trained head, not that
            pooler = tensors(f, names, aliases, "pooler.") if config.get("task") == "pretraining" else {}
    except Exception as err:  # safetensors raises its own error types for truncated or corrupt files
        raise ValueError(f"cannot read weights from {path / WEIGHTS}: {err}") from err
    if not encoder:
        raise ValueError(f"{path / WEIGHTS}: the export has no encoder.* weights to fine-tune")
    return Pretrained(path, config, read_tokenizer(path), encoder, pooler or None)


def resolve_head(head: str, pretrained: Pretrained) -> str:
    """``auto``: BERT's pooler head (``bert``) for recipe=bert/roberta exports, as their own
    fine-tuning does; the reference's ``crammed`` head otherwise. Other names are kept as given."""
    from cramming.model import CLASSIFIER_HEADS

    if getattr(pretrained, "external", False):  # a transformers checkpoint (cramming.external)
        from cramming.external import resolve_external_head

        head = resolve_external_head(head, pretrained)
    if head == "auto":
        return "bert" if pretrained.recipe in ("bert", "roberta") else "crammed"
    if head not in CLASSIFIER_HEADS:
        raise ValueError(f"head={head!r} is not one of {['auto', *CLASSIFIER_HEADS]}")
    return head


def build_finetune_model(
    pretrained: Pretrained,
    num_labels: int,
    dropout: float = 0.1,
    head: str = "auto",
    attention_dropout: float = 0.1,
) -> torch.nn.Module:
    """A fresh classifier whose encoder is loaded strictly from ``pretrained``; with the ``bert``
    head, its pooler starts from the export's pretrained pooler when there is one (BERT's NSP pooler)."""
    from cramming.export import WEIGHTS
    from cramming.model import build_classifier

    config, head = pretrained.config, resolve_head(head, pretrained)
    if getattr(pretrained, "external", False):  # a transformers checkpoint: AutoModel under the same head
        from cramming.external import ExternalClassifier

        return ExternalClassifier(pretrained, num_labels, dropout, head, attention_dropout)
    try:
        model = build_classifier(
            config["arch"],
            config["vocab_size"],
            num_labels,
            pretrained.encoder,
            dropout,
            head,
            attention_dropout,
        )
    except RuntimeError as err:  # strict load: missing, unexpected or mis-shaped keys
        raise ValueError(
            f"{pretrained.path / WEIGHTS}: the encoder weights do not match config.json's arch: {err}"
        ) from err
    if head == "bert" and pretrained.pooler:
        model.pooler.load_state_dict(pretrained.pooler, strict=True)
    return model


def score_logits(targets: Sequence, logits: np.ndarray, labels: Sequence[str] | None) -> dict:
    """Metrics of one scored split, as fractions: ``regression_metrics`` on ``logits[:, 0]`` when
    ``labels`` is None, else ``classification_metrics`` of the argmax (report + confusion matrix)."""
    from cramming import metrics

    if labels is None:
        return metrics.regression_metrics(targets, logits[:, 0])
    return metrics.classification_metrics(targets, logits.argmax(axis=-1), labels)
