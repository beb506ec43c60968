"""Importing the models loads neither the data pipeline, nor Triton, nor transformers; IGNORE_INDEX is one.

The model owns the label of a position without a target (``cramming.models.IGNORE_INDEX``) and the
masking imports it: before, the model imported it from the data package, so ``import cramming.model``
loaded corpus preparation, packing and the data config with it.
"""

import subprocess
import sys


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return set(result.stdout.split())


def test_importing_the_models_loads_no_data_pipeline_triton_or_transformers():
    loaded = _loaded_after("import cramming.models")
    assert "cramming.models.mlm" in loaded  # the probe itself works
    unwanted = {"cramming.data", "cramming.data.prepare", "cramming.data.masking", "triton", "transformers"}
    assert not loaded & unwanted, sorted(loaded & unwanted)


def test_loading_an_export_loads_no_data_pipeline():
    """``cramming.load_model`` (export folders) serves inference code: it needs the model, not the corpus."""
    loaded = _loaded_after("import cramming.export.folder")
    assert "cramming.export.folder" in loaded
    assert "cramming.data.prepare" not in loaded and "transformers" not in loaded


def test_the_masking_labels_with_the_models_ignore_index():
    import cramming.data
    from cramming.data import masking
    from cramming.models import IGNORE_INDEX, heads

    assert masking.IGNORE_INDEX is heads.IGNORE_INDEX == IGNORE_INDEX == -100
    assert not hasattr(cramming.data, "IGNORE_INDEX"), "one public home: cramming.models"
