"""The pretraining command, `python -m cramming ...`: compose the config, check it, pretrain, then GLUE if asked."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from cramming import distributed
from cramming.commands import fail, run_app
from cramming.config import CONF_PATH, validate_run
from cramming.data.config import check_files
from cramming.tracking import setup_logging

log = logging.getLogger("cramming")


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.base_dir) / str(cfg.name)


def check_run_folder(run_dir: Path, resume: bool) -> None:
    """A new run must not reuse the folder of an earlier one: its checkpoints would be mixed with ours."""
    earlier = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    if earlier and not resume:
        raise ValueError(
            f"{run_dir} already holds checkpoints of an earlier run ({earlier[-1].name}); pass resume=true to "
            f"continue that run, or choose another name= for a new one"
        )


def pretrain_main(cfg: DictConfig, objective=None) -> dict:
    """Check, set up the run folder and logging, train (``objective``: what to train, see
    cramming.train.objective; distillation passes its own), then GLUE."""
    from cramming.train import pretrain

    run_dir, rank = run_dir_of(cfg), distributed.rank()
    try:
        budget = validate_run(cfg)  # the typed schema's checks, run once, before any work
        check_files(cfg.data)  # every data file named exists and starts readable
        check_run_folder(run_dir, bool(cfg.resume))
    except ValueError as err:
        fail(err)
    if rank == 0:  # under torchrun only rank 0 writes
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    setup_logging(run_dir, rank)
    if cfg.resume and not (run_dir / "checkpoints").is_dir():
        log.warning("resume=true but %s has no checkpoints folder (is name=%s right?)", run_dir, cfg.name)
    log.info("run %s: budget %s, outputs in %s", cfg.name, budget.describe(), run_dir)
    container = OmegaConf.to_container(cfg, resolve=True)
    try:
        summary = pretrain(container, run_dir, budget, objective)
    except ValueError as err:
        log.error("%s", err)
        fail(err)
    except FloatingPointError as err:  # training diverged: a clear message, not a traceback
        log.error("%s", err)
        print(f"cramming: training stopped: {err}", file=sys.stderr)
        sys.exit(1)
    if cfg.eval.name == "glue" and summary.get("finished") and rank == 0:
        from cramming.glue import run_glue_from_pretraining

        run_glue_from_pretraining(run_dir / "model", container["eval"], container["impl"])
    return summary


@hydra.main(config_path=CONF_PATH, config_name="pretrain", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    pretrain_main(cfg)


def main() -> None:
    run_app(hydra_main)


if __name__ == "__main__":
    main()
