"""Hostile config values: every numeric key with a declared range (``RANGES`` on its config section), set
just outside the range, is a ConfigError naming the key at load time, before anything is built; values
on the edge of the range load. Generated from the recipe schemas, plus the named cases of issue 14."""
from __future__ import annotations

import copy
import dataclasses
import functools
import glob
import os
import re

import pytest
import yaml

from mm_ptft.config import ConfigError, in_range, validate
from mm_ptft.run import load_config
from mm_ptft.tasks import get_recipe

from mm_paths import ROOT

TINY = {os.path.basename(os.path.dirname(p)): p for p in glob.glob(os.path.join(ROOT, "recipes", "*", "tiny.yaml"))}


def ranged_keys(schema: type, seen: set, prefix: str = "") -> list[tuple[str, str, bool]]:
    """(dotted key, range spec, is a list) for every ranged key of ``schema`` and its nested sections; a
    section class already ``seen`` (train/optim/... are shared by every recipe) is covered once."""
    out = []
    for f in dataclasses.fields(schema):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out += ranged_keys(type(default), seen, f"{prefix}{f.name}.")
        spec = getattr(schema, "RANGES", {}).get(f.name)
        if spec and (schema, f.name) not in seen:
            seen.add((schema, f.name))
            out.append((f"{prefix}{f.name}", spec, isinstance(default, list)))
    return out


def outside(spec: str) -> list[float]:
    """Values just outside ``spec`` (and the edges it includes, which must pass)."""
    m = re.match(r"^(>=|>|<=|<)(-?[\d.]+)$", spec)
    if m:
        b = float(m.group(2))
        return {">": [b, b - 1], ">=": [b - 1], "<": [b, b + 1], "<=": [b + 1]}[m.group(1)]
    lo_open, lo, hi, hi_open = spec[0] == "(", *map(float, spec[1:-1].split(",")), spec[-1] == ")"
    return [lo - 0.5] + ([lo] if lo_open else []) + [hi + 0.5] + ([hi] if hi_open else [])


def cases():
    seen: set = set()
    for name, path in sorted(TINY.items(), key=lambda kv: kv[0] != "text_classification"):
        for key, spec, is_list in ranged_keys(get_recipe(name).config_cls, seen):
            for v in outside(spec):
                v = int(v) if v == int(v) else v
                yield pytest.param(path, key, f"[{v}]" if is_list else str(v), id=f"{name}:{key}={v}")


_LOADED: dict[str, object] = {}


@pytest.mark.parametrize("path,key,value", list(cases()))
def test_out_of_range_value_is_a_config_error_naming_the_key(path, key, value):
    """The recipe's tiny config (loaded once) with one key set outside its range fails ``validate``, which
    ``config.parse`` runs on every load (the named cases below go through the full load)."""
    if path not in _LOADED:
        _LOADED[path] = load_config(path, ["output_dir=/nonexistent/run"])
    cfg = copy.deepcopy(_LOADED[path])
    *parents, leaf = key.split(".")
    section = functools.reduce(getattr, parents, cfg)
    setattr(section, leaf, yaml.safe_load(value))
    with pytest.raises(ConfigError, match=rf"'{re.escape(key)}'.*out of range"):
        validate(cfg)


# The cases the issue names, spelled as a user types them (one line each).
NAMED = [
    ("text_classification", "train.batch_size=0"), ("text_classification", "train.batch_size=-1"),
    ("text_classification", "train.epochs=-1"), ("text_classification", "optim.lr=0"),
    ("text_classification", "optim.lr=-0.001"), ("text_classification", "sched.warmup_steps=-5"),
    ("text_classification", "train.grad_accum_steps=0"), ("text_classification", "data.eval_fraction=0"),
    ("text_classification", "data.eval_fraction=1"), ("text_classification", "data.eval_fraction=1.5"),
    ("text_classification", "data.max_length=0"), ("text_classification", "finetune.lora_r=0"),
    ("text_classification", "train.keep_last=-1"), ("text_classification", "model.dropout=1.0"),
    ("text_classification", "model.dropout=-0.1"), ("text_classification", "model.label_smoothing=1"),
    ("text_classification", "train.num_workers=-2"), ("text_classification", "optim.betas=[0.9,1.0]"),
    ("text_classification", "optim.lr=.nan"),
    ("multimodal_classification", "data.max_audio_seconds=0"), ("pretrain_contrastive", "data.max_audio_seconds=-1"),
    ("image_classification", "data.augment.hflip=1.5"), ("image_classification", "data.augment.scale=[0,1]"),
    ("speech_recognition", "model.beam_size=0"), ("speech_recognition", "data.augment.speed_factors=[0.9,0]"),
    ("detection", "model.min_size=[0]"), ("detection", "data.augment.resize=[0,64]"),
    ("distillation", "model.temperature=0"),
]


@pytest.mark.parametrize("recipe,override", NAMED, ids=[f"{r}:{o}" for r, o in NAMED])
def test_named_bad_value(recipe, override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
        load_config(TINY[recipe], [override])


EDGES = ["train.epochs=0", "train.max_steps=-1", "train.eval_batch_size=0", "train.grad_clip=0", "train.keep_last=0",
         "optim.weight_decay=0", "sched.warmup_steps=0", "model.dropout=0", "model.label_smoothing=0.99",
         "data.eval_fraction=0.5", "finetune.lora_dropout=0", "optim.betas=[0,0.999]"]


@pytest.mark.parametrize("override", EDGES)
def test_edge_value_loads(override):
    load_config(TINY["text_classification"], [override])


@pytest.mark.parametrize("spec,good,bad", [(">0", 1e-9, 0), (">=0", 0, -1e-9), ("[0,1)", 0, 1), ("(0,1]", 1, 0),
                                           (">=-1", -1, -2), ("(0,1)", 0.5, float("nan"))])
def test_in_range_is_exact_at_the_edges(spec, good, bad):
    assert in_range(spec, good) and not in_range(spec, bad) and not in_range(spec, True)


def test_cli_exits_2_naming_the_key(tmp_path, capsys):
    from mm_ptft.cli import main

    code = main(["train", TINY["text_classification"], f"output_dir={tmp_path / 'run'}", "train.batch_size=0"])
    err = capsys.readouterr().err
    assert code == 2 and "mm-ptft: error:" in err and "'train.batch_size'" in err and "Traceback" not in err


# Encoder specs are free-form mappings ({name, **kwargs}): their size options are checked when the encoder
# is built (``encoders.base.check_sizes``), before any data is read: a ConfigError naming the key, exit 2.
ENCODER_SIZES = [
    ("audio", {"name": "tiny", "sample_rate": 0}, "model.audio.sample_rate"),
    ("audio", {"name": "tiny", "n_mels": 0}, "model.audio.n_mels"),
    ("audio", {"name": "tiny", "dim": -8}, "model.audio.dim"),
    ("image", {"name": "tiny_cnn", "img_size": 0}, "model.image.img_size"),
    ("image", {"name": "tiny_cnn", "widths": [16, 0]}, "model.image.widths"),
    ("text", {"name": "tiny", "vocab_size": 0}, "model.text.vocab_size"),
    ("text", {"name": "hf", "config": {"model_type": "bert", "hidden_size": 0}}, "model.text.config.hidden_size"),
]


@pytest.mark.parametrize("modality,spec,key", ENCODER_SIZES, ids=[k for _, _, k in ENCODER_SIZES])
def test_encoder_size_option_out_of_range_is_a_config_error(modality, spec, key):
    from mm_ptft.encoders import TEXT_ENCODERS
    from mm_ptft.encoders.audio import AUDIO_ENCODERS
    from mm_ptft.encoders.base import build_encoder
    from mm_ptft.encoders.image import IMAGE_ENCODERS

    registry = {"audio": AUDIO_ENCODERS, "image": IMAGE_ENCODERS, "text": TEXT_ENCODERS}[modality]
    with pytest.raises(ConfigError, match=rf"'{re.escape(key)}'.*out of range"):
        build_encoder(registry, spec, f"model.{modality}")


@pytest.mark.parametrize("override,message", [
    ("model.text.bogus=1", r"model\.text: unknown key\(s\) model\.text\.bogus"),
    ("model.text.name=nope", r"unknown text_encoder 'nope'"),
], ids=["unknown-encoder-option", "unknown-encoder-name"])
def test_unknown_encoder_name_or_option_exits_2(tmp_path, capsys, override, message):
    from mm_ptft.cli import main

    code = main(["train", TINY["text_classification"], f"output_dir={tmp_path / 'run'}", override])
    err = capsys.readouterr().err
    assert code == 2 and re.search(message, err) and "Traceback" not in err
