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
