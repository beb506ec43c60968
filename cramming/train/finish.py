"""The end of a pretraining run: final validation, the summary, the last checkpoint, the export and report."""

from __future__ import annotations

import json
import logging

from cramming.kernels import dispatch
from cramming.plots import plot_run
from cramming.report import environment, report_at_end
from cramming.train.evaluate import validate

log = logging.getLogger("cramming")


def finish(trainer) -> dict:
    """Validate, checkpoint, export ``RUN/model`` (the objective's export), write summary.json and the report."""
    clock, budget, prog = trainer.clock, trainer.budget, trainer.progress
    elapsed = clock.elapsed()
    overshoot = elapsed - budget.amount if budget.kind == "time" else 0.0
    log.info("budget spent: %s after %d steps, %s tokens, %.1f s (overshoot %.1f s)",
             budget.describe(), prog.step, f"{prog.tokens:,}", elapsed, overshoot)  # fmt: skip
    summary = run_summary(trainer, validate(trainer), elapsed, overshoot)
    if trainer.checkpoints.saved_step != prog.step:
        trainer.save_checkpoint()
    run_dir = trainer.run_dir
    if trainer.runtime.rank == 0:
        trainer.objective.export(trainer.model, summary, run_dir / "model")
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot_run(run_dir)
        log.info("exported model to %s", run_dir / "model")
        report_at_end(run_dir)  # RUN/report.html (rewritten by GLUE when eval=glue)
    trainer.tracker.finish(summary)
    return summary


def run_summary(trainer, valid_loss: float | None, elapsed: float, overshoot: float) -> dict:
    """summary.json: what ran, how far it got, its final losses, and how fast."""
    prog, rt, book, step = trainer.progress, trainer.runtime, trainer.logbook, trainer.compiled
    final = book.last_side_metrics
    return {
        "name": trainer.run_dir.name,
        "arch": trainer.cfg["arch"]["name"],
        "recipe": trainer.cfg.get("recipe", "crammed"),
        "budget": trainer.budget.text,
        "budget_kind": trainer.budget.kind,
        "hardware": rt.hardware_name(),
        "precision": str(rt.dtype).replace("torch.", ""),
        "parameters": trainer.num_params,
        "steps": prog.step,
        "tokens_seen": prog.tokens,
        "skipped_steps": prog.skipped_steps,
        "nonfinite_restores": prog.restores,
        "final_mlm_loss": final.get("mlm_loss", book.last_train_loss),
        **{f"final_{k}": v for k, v in final.items() if k != "mlm_loss"},
        "valid_mlm_loss": valid_loss,
        "elapsed_s": elapsed,
        "overshoot_s": overshoot,
        "tokens_per_s": prog.tokens / max(elapsed, 1e-9),
        "data_wait": trainer.batches.waited / max(trainer.loop_seconds, 1e-9),  # this process's loop
        "compiled": step.module is not step.eager,
        "compile_s": step.compile_seconds,  # the first step's time, compilation included
        "kernels": dispatch.describe(rt.device),  # what ran, for the run report
        "microbatch": trainer.microbatch.as_dict(),  # the size used and why (train.microbatch_size=auto)
        "environment": environment(),  # versions and git revision
        "finished": True,
    }


def stop_early(trainer) -> dict:
    """``train.stop_after_steps`` (a testing aid): checkpoint, then end like a crash: no export, no summary."""
    if trainer.checkpoints.saved_step != trainer.progress.step:
        trainer.save_checkpoint()
    log.warning(
        "train.stop_after_steps=%d reached: stopping without finishing the run", trainer.progress.step
    )
    trainer.tracker.finish()
    return {"name": trainer.run_dir.name, "steps": trainer.progress.step, "finished": False}
