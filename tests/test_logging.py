"""Each log line appears once on the console and once in log.txt."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import logging, logging.config, sys
from pathlib import Path
from cramming.tracking import setup_logging
if sys.argv[2] == "hydra":  # what hydra/job_logging=stdout installs for glue, finetune and predict
    logging.config.dictConfig({"version": 1, "formatters": {"simple": {"format": "%(message)s"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "simple", "stream": "ext://sys.stdout"}},
        "root": {"level": "INFO", "handlers": ["console"]}, "disable_existing_loggers": False})
setup_logging(Path(sys.argv[1]))
setup_logging(Path(sys.argv[1]))  # a second call (eval=glue after pretraining) adds nothing
from huggingface_hub.utils import logging as hub_logging
hub_logging.get_logger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
logging.getLogger("cramming.data").info("prepared 86 documents")
"""


@pytest.mark.parametrize("logging_setup", ["pretrain", "hydra"])
def test_a_message_logged_once_appears_once(tmp_path, logging_setup):
    """Catches the duplicated hub retry lines: huggingface_hub prints with a handler of its own and also
    propagates to the root logger's console handler."""
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), logging_setup], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    console, log_txt = proc.stdout + proc.stderr, (tmp_path / "log.txt").read_text()
    for message in ("Retrying in 1s [Retry 1/5].", "prepared 86 documents"):
        assert console.count(message) == 1, console
        assert log_txt.count(message) == 1, log_txt
