"""Fine-tune a classifier in place, and predict with it: the engine GLUE and custom tasks share.

    model = finetune(model, data, FinetuneSettings(lr=4e-5, epochs=5), runtime, seed=0)
    logits = predict(model, dev_data, batch_size=64, runtime=runtime)   # (N, num_labels), input order

``runtime`` is the job's ``cramming.runtime.Runtime`` (device, precision, compile), built once by
the caller with ``make_runtime``. Each optimizer step is pretraining's own ``optimizer_step`` (one
microbatch, the scheduler's LR passed in), run through ``CompiledStep`` so ``impl.compile`` works.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np
import torch

from cramming.budget import cosine_with_warmup
from cramming.config.finetune import FinetuneSettings
from cramming.finetune.encode import EncodedExamples, bucket_lengths, collate, length_batches
from cramming.optim import build_adamw
from cramming.runtime import CompiledStep, Runtime, seed_everything
from cramming.train import optimizer_step

log = logging.getLogger(__name__)


def total_steps(lengths: np.ndarray, settings: FinetuneSettings) -> int:
    """Optimizer steps of ``settings.epochs`` epochs (a fraction of an epoch allowed), at least one."""
    steps_per_epoch = len(length_batches(lengths, settings.batch_size, True, np.random.default_rng(0)))
    return max(1, round(settings.epochs * steps_per_epoch))


def finetune(
    model: torch.nn.Module,
    train_set: EncodedExamples,
    settings: FinetuneSettings,
    runtime: Runtime,
    seed: int = 0,
    class_weights: torch.Tensor | None = None,
) -> torch.nn.Module:
    """Train ``model`` (a classifier returning ``{"loss", "logits"}``) in place on ``train_set``; returns it.

    ``seed`` fixes the batch order and dropout; ``settings.lr`` must be a number (``with_lr_for``
    resolves ``auto``). The model is moved to ``runtime.device`` and left in eval mode.
    """
    if train_set.labels is None or len(train_set) == 0:
        raise ValueError("finetune needs a non-empty training set with labels")
    if isinstance(settings.lr, str):
        raise ValueError(f"lr={settings.lr!r}: resolve it for the model first (FinetuneSettings.with_lr_for)")
    # One process fine-tunes (GLUE after a torchrun pretraining runs on rank 0 alone): nothing to average.
    runtime = replace(runtime, rank=0, world_size=1)
    device = runtime.device
    seed_everything(seed)  # dropout; the batch order has its own stream (rng below)
    model.to(device).train()
    optimizer = build_adamw(model, lr=settings.lr, betas=settings.betas, eps=settings.eps,
                            weight_decay=settings.weight_decay, device=device)  # fmt: skip
    # fp16 needs loss scaling; a disabled scaler is left out (optimizer_step then steps directly)
    scaler = torch.amp.GradScaler(device.type) if runtime.precision == "fp16" else None
    weights = class_weights.to(device) if class_weights is not None else None
    if runtime.compile:
        # GLUE fine-tunes many times in one process (tasks x seeds, each with its own short batch and
        # head): graphs of earlier runs would count against Dynamo's limit of 8 per function, past
        # which it silently runs eager. Inductor's cache makes compiling the same graphs again cheap.
        torch._dynamo.reset()
    compiled = CompiledStep(model, runtime, "fine-tuning step")
    lengths = train_set.lengths
    buckets = bucket_lengths(int(lengths.max())) if runtime.compile else None
    total = total_steps(lengths, settings)

    def batches():  # the model's keyword arguments, epoch after epoch, in a fresh order each epoch
        rng = np.random.default_rng(seed)
        while True:
            for indices in length_batches(lengths, settings.batch_size, True, rng):
                yield {**collate(train_set, indices, device, buckets), "class_weights": weights}

    def step(module: torch.nn.Module, next_batch, lr: float):
        return optimizer_step(model=module, optimizer=optimizer, next_microbatch=next_batch, accum=1, lr=lr,
                              grad_clip=settings.grad_clip, runtime=runtime, scaler=scaler)  # fmt: skip

    run_steps(compiled, step, batches(), total, settings)
    model.eval()
    return model


def run_steps(compiled: CompiledStep, step, batches, total: int, settings: FinetuneSettings) -> None:
    """``total`` optimizer steps; step s (0-based) runs at the budget-cosine schedule's value at p = s / total.
    Logs the mean loss every ``settings.log_every`` steps and at the last one."""
    started, running, skipped = time.perf_counter(), [], 0
    for done in range(1, total + 1):
        lr = settings.lr * cosine_with_warmup((done - 1) / total, settings.warmup_fraction)
        loss, _, finite = compiled.run(lambda module, next_batch: step(module, next_batch, lr),  # noqa: B023
                                       lambda: next(batches))  # fmt: skip
        running.append(loss)
        skipped += not finite
        if done == total or (settings.log_every and done % settings.log_every == 0):
            mean = float(np.mean([float(x) for x in running]))  # device scalars or floats: read at log time
            next_lr = settings.lr * cosine_with_warmup(done / total, settings.warmup_fraction)
            log.info("step %d/%d | loss %.4f | lr %.2e | %.1fs",
                     done, total, mean, next_lr, time.perf_counter() - started)  # fmt: skip
            running = []
    if skipped:
        log.warning("skipped %d of %d optimizer steps with a non-finite loss or gradient", skipped, total)


@torch.inference_mode()
def predict(
    model: torch.nn.Module, dataset: EncodedExamples, batch_size: int = 64, runtime: Runtime | None = None
) -> np.ndarray:
    """Logits (N, num_labels) as float32, in the dataset's order (batches run sorted by length).
    ``runtime``: device and precision (default: CPU, fp32)."""
    runtime = runtime or Runtime(torch.device("cpu"), torch.float32)
    was_training = model.training
    model.to(runtime.device).eval()
    num_labels = getattr(model, "num_labels", None)
    outputs: list[np.ndarray] = []
    order: list[np.ndarray] = []
    unlabelled = EncodedExamples(dataset.input_ids, dataset.token_type_ids, None, dataset.pad_id)
    for indices in length_batches(dataset.lengths, batch_size, shuffle=False):
        batch = collate(unlabelled, indices, runtime.device)
        with runtime.autocast():
            logits = model(**batch)["logits"]  # (B, num_labels)
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
