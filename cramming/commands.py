"""What every command shares: bad input becomes one ``error:`` line and exit status 2.

Each command (``python -m cramming``, ``cramming.glue``, ``cramming.finetune``,
``cramming.predict``, ``cramming.distill``, ``cramming.leaderboard``, ``cramming.report``)
lives in its own module and reports bad input through ``fail`` or ``cli_errors``, so a
user sees the same short message, never a traceback, whichever command they ran.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

from omegaconf import DictConfig, OmegaConf

from cramming import distributed


def say_error(err: Exception | str, command: str = "cramming") -> None:
    """One paragraph on stderr that names the command: ``cramming.glue: error: ...``."""
    print(f"{command}: error: {err}", file=sys.stderr)


def fail(err: Exception | str, command: str = "cramming", status: int = 2) -> NoReturn:
    """Bad input: ``say_error``, then exit ``status`` (2 = usage error), no traceback."""
    say_error(err, command)
    sys.exit(status)


def cli_errors(fn: Callable[[dict], object], command: str = "cramming") -> Callable[[DictConfig], object]:
    """Run ``fn`` on a Hydra config as a plain dict; a ValueError (bad input) becomes ``fail``."""

    def wrapper(cfg: DictConfig):
        try:
            missing = sorted(OmegaConf.missing_keys(cfg))
            if missing:
                raise ValueError(f"missing required option(s): {', '.join(k + '=...' for k in missing)}")
            return fn(OmegaConf.to_container(cfg, resolve=True))
        except ValueError as err:
            fail(err, command)

    return wrapper


def run_app(app: Callable[[], None]) -> None:
    """Entry point; under torchrun, joins the process group and makes all ranks use one run name."""
    _, world = distributed.setup()
    try:
        if world > 1 and not any(arg.startswith("name=") for arg in sys.argv[1:]):
            # The default name is ${now:...}, which each rank would resolve on its own.
            sys.argv.append(f"name={distributed.agreed_run_name()}")
        app()
    except BaseException:
        distributed.teardown(wait_for_others=False)
        raise
    distributed.teardown()
