"""Where the Hydra configs live: ``CONF_DIR`` and ``read_yaml`` for code that needs a default file.

Composing needs the typed schema in Hydra's ConfigStore too: take ``CONF_PATH`` from ``cramming.config``,
which registers it on import.

The YAML files sit in the repository's top-level ``conf/`` folder, which has no ``__init__.py`` so
that it can never shadow an installed package named ``conf`` (see ``cramming/kernels.py`` for the
same rule). A wheel installs them as ``cramming/conf/`` (``package-dir`` in pyproject.toml); a
checkout or editable install reads them in place. Entry points pass ``str(CONF_DIR)`` to
``hydra.main`` as an absolute ``config_path``.
"""

from pathlib import Path
from typing import Any


def _conf_dir() -> Path:
    here = Path(__file__).resolve().parent
    candidates = (here / "conf", here.parent / "conf")  # wheel install, then checkout
    for folder in candidates:
        if (folder / "pretrain.yaml").is_file():
            return folder
    raise ImportError(f"cramming: no Hydra configs (pretrain.yaml) in {[str(d) for d in candidates]}")


CONF_DIR = _conf_dir()
CONF_PATH = str(CONF_DIR)  # what hydra.main(config_path=...) and initialize_config_dir take


def read_yaml(*parts: str) -> dict[str, Any]:
    """One config file as a plain dict, e.g. ``read_yaml("impl", "default.yaml")``: the one place that reads
    default values from YAML. The file's ``defaults`` list is followed within its group (train/cpu.yaml is
    bert-o4.yaml plus its own keys); entries without a file there (``schema``: the typed schema,
    ``_self_``) add no values."""
    from omegaconf import DictConfig, OmegaConf

    folder = CONF_DIR.joinpath(*parts[:-1])
    node = OmegaConf.load(CONF_DIR.joinpath(*parts))
    assert isinstance(node, DictConfig)
    parents = [e for e in node.pop("defaults", []) if isinstance(e, str) and (folder / f"{e}.yaml").is_file()]
    bases = [OmegaConf.create(read_yaml(*parts[:-1], f"{parent}.yaml")) for parent in parents]
    return OmegaConf.to_container(OmegaConf.merge(*bases, node), resolve=True)
