"""``mm_ptft/__init__.py``: the import paths of modules moved out of the flat root still work for one release."""
from __future__ import annotations

import importlib
import sys

import pytest

import mm_ptft


@pytest.mark.parametrize("old, new", sorted(mm_ptft.MOVED.items()))
def test_an_old_import_path_is_the_new_module_with_a_warning(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)  # one object: a monkeypatch on either reaches the same code
    assert module.__name__ == new


def test_from_import_of_a_moved_module_and_its_names():
    sys.modules.pop("mm_ptft.finetune", None)
    with pytest.warns(DeprecationWarning):
        from mm_ptft.finetune import apply_finetune
    from mm_ptft.train.finetune import apply_finetune as moved

    assert apply_finetune is moved


def test_every_moved_target_exists_and_no_old_file_is_left():
    for old, new in mm_ptft.MOVED.items():
        assert importlib.util.find_spec(new) is not None, new
        assert not any((p / (old.split(".")[-1] + ".py")).exists()
                       for p in map(__import__("pathlib").Path, importlib.import_module(old.rsplit(".", 1)[0]).__path__))


def test_unknown_names_are_still_errors():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("mm_ptft.no_such_module")


HEAVY = ("torch", "torchmetrics", "torchaudio", "torchvision", "matplotlib", "timm", "open_clip", "transformers")


def _loaded_after(code: str, names: tuple[str, ...]) -> list[str]:
    """The modules of ``names`` a fresh interpreter holds after running ``code``."""
    import subprocess

    probe = f"{code}\nimport sys\nprint(' '.join(n for n in {names!r} if n in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_import_mm_ptft_loads_no_heavy_stack():
    """``import mm_ptft`` is the package root only: no torch, no metrics/audio/vision/plotting stack (the torchaudio
    guard waits for the first import of transformers)."""
    assert _loaded_after("import mm_ptft", HEAVY) == []


def test_the_text_run_modules_load_no_metrics_vision_or_plotting_stack():
    """The modules a text-classification run imports (front to head and metrics) leave torchmetrics — and with it
    its image, audio and plotting imports — to the function that builds the metrics."""
    code = ("import mm_ptft.cli, mm_ptft.run, mm_ptft.tasks.text_classification, mm_ptft.heads.classification, "
            "mm_ptft.metrics, mm_ptft.train.trainer")
    assert _loaded_after(code, HEAVY[1:]) == []


def test_the_torchaudio_guard_runs_before_transformers_is_imported():
    """The guard still runs first: transformers, imported after mm_ptft, finds torchaudio already loaded (or hidden)."""
    import importlib.util

    if importlib.util.find_spec("torchaudio") is None:
        pytest.skip("torchaudio not installed: nothing to guard")
    code = ("import sys, mm_ptft\nassert 'torchaudio' not in sys.modules\nimport transformers\n"
            "from mm_ptft.env import _GuardBeforeImport\n"
            "assert [f.done for f in sys.meta_path if isinstance(f, _GuardBeforeImport)] == [True]")
    assert _loaded_after(code, ("torchaudio",)) == ["torchaudio"]
