"""Held-out figures during and after pretraining: the validation MLM loss and the fixed held-out text."""

from __future__ import annotations

import logging

import torch

from cramming.runtime import Runtime

log = logging.getLogger("cramming")


@torch.no_grad()
def evaluate_mlm(model, sequences, collator, runtime: Runtime, batch_size: int, max_batches: int) -> float:
    """Mean MLM loss on held-out sequences with a fixed masking seed, so runs are comparable."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(1234)
    losses = []
    count = min(len(sequences), batch_size * max_batches)
    for start in range(0, count, batch_size):
        ids = torch.as_tensor(sequences[start : min(start + batch_size, count)].astype("int64"))
        batch = collator(ids, generator=generator)
        with runtime.autocast():
            out = model(**{name: t.to(runtime.device) for name, t in batch.items()})
            # BERT: the MLM part; distillation: the student's MLM loss, not the weighted KL/cosine sum
            losses.append(out.get("mlm_loss", out["loss"]).detach().float())
    model.train(was_training)
    if not losses:
        return 0.0
    return sum(torch.stack(losses).tolist()) / len(losses)  # one read of the device


def validate(trainer) -> float | None:
    """Held-out MLM loss, on rank 0 only (no collectives, so the other ranks just wait)."""
    corpus, rt = trainer.corpus, trainer.runtime
    if rt.rank != 0 or corpus.valid is None or len(corpus.valid) == 0:
        return None
    t, step = trainer.train_cfg, trainer.progress.step
    micro, batches = int(t["microbatch_size"]), int(t["validation_batches"])
    loss = evaluate_mlm(trainer.model, corpus.valid, trainer.collator, rt, micro, batches)
    log.info("validation | step %d | MLM loss %.4f", step, loss)
    trainer.tracker.log({"step": step, "loss": loss, "elapsed_s": trainer.clock.elapsed()}, "valid")
    return loss


def score_heldout(trainer) -> None:
    """The fixed held-out text (cramming.heldout), logged as metrics kind "heldout"."""
    prog = trainer.progress
    # elapsed_s before scoring: the evaluation is not training time
    record = {"step": prog.step, "tokens": prog.tokens, "elapsed_s": trainer.clock.elapsed()}
    result = trainer.heldout(trainer.model, trainer.runtime.device)
    if result is None:
        return
    record |= {"loss": result["nats_per_masked_token"], "bits_per_char": result["bits_per_char"]}
    line = "held-out | step %d | %.4f nats/masked token | %.4f bits/char"
    log.info(line, prog.step, record["loss"], record["bits_per_char"])
    trainer.tracker.log(record, "heldout")
