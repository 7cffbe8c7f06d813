import dataclasses
from typing import ClassVar

import pytest

from mm_ptft.config import ConfigError, SkipBadSamples, SplitData, StreamingData, declared, validate
from mm_ptft.run import load_config
from mm_ptft.tasks.text_classification import TextClassificationConfig

from mm_paths import TEXT_TINY


def test_tiny_yaml_loads_typed_with_overrides():
    cfg = load_config(TEXT_TINY, ["train.max_steps=7", "optim.lr=3e-4", "model.text.pooling=cls", "output_dir=/tmp/o"])
    assert isinstance(cfg, TextClassificationConfig)
    assert cfg.train.max_steps == 7 and cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.model.text["pooling"] == "cls" and cfg.output_dir == "/tmp/o"
    # every recipe has these keys
    for key in ("seed", "train.epochs", "train.batch_size", "train.grad_accum_steps", "optim.name",
                "optim.weight_decay", "sched.name", "sched.warmup_steps", "data.train_file", "data.eval_file"):
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)


@pytest.mark.parametrize("override, key", [
    ("train.epochz=3", "train.epochz"),
    ("optim.lrr=0.1", "optim.lrr"),
    ("data.text_colum=x", "data.text_colum"),
])
def test_unknown_key_is_named(override, key):
    with pytest.raises(ConfigError, match=rf"unknown config key '{key}'"):
        load_config(TEXT_TINY, [override])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_config(TEXT_TINY, ["train.batch_size=lots"])


def test_missing_task_and_unknown_task(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("seed: 1\n")
    with pytest.raises(ConfigError, match="'task'"):
        load_config(p)
    p.write_text("task: text_clasification\n")
    with pytest.raises(ConfigError, match="text_clasification"):
        load_config(p)


def test_malformed_override():
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(TEXT_TINY, ["train.max_steps"])


def test_unknown_yaml_key_in_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("task: text_classification\ntrain:\n  bacth_size: 4\n")
    with pytest.raises(ConfigError, match=r"train\.bacth_size"):
        load_config(p)


def test_mapping_override_replaces_the_component():
    """Switching encoder on the command line drops the YAML's keys for the old one."""
    cfg = load_config(TEXT_TINY, ['model.text={name: tiny, dim: 32}', "model.text.depth=1"])
    assert cfg.model.text == {"name": "tiny", "dim": 32, "depth": 1}


def test_null_override():
    cfg = load_config(TEXT_TINY, ["data.generate=null", "data.train_file=x.csv"])
    assert cfg.data.generate is None and cfg.data.train_file == "x.csv"


@pytest.mark.parametrize("value, parsed", [("true", True), ("false", False), ("default", "default"),
                                           ("reduce-overhead", "reduce-overhead"), ("max-autotune", "max-autotune"),
                                           ("max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs")])
def test_train_compile_takes_a_bool_or_a_mode(value, parsed, tmp_path):
    yaml_file = tmp_path / "c.yaml"  # the same from a YAML file: a bool stays a bool, a mode a string
    yaml_file.write_text(f"task: text_classification\ntrain: {{compile: {value}}}\n")
    for got in (load_config(TEXT_TINY, [f"train.compile={value}"]).train.compile, load_config(str(yaml_file)).train.compile):
        assert got == parsed and type(got) is type(parsed)


@pytest.mark.parametrize("value", ["fast", "reduce_overhead", "1", "[default]"])
def test_bad_train_compile_is_named_with_the_choices(value):
    with pytest.raises(ConfigError, match=r"train\.compile"):
        load_config(TEXT_TINY, [f"train.compile={value}"])
    with pytest.raises(ConfigError, match="false, true, default, reduce-overhead, max-autotune"):
        load_config(TEXT_TINY, ["train.compile=fast"])


def test_train_compile_is_checked_on_a_config_built_in_code():
    from mm_ptft.config import TrainConfig

    with pytest.raises(ConfigError, match=r"train\.compile.*'eager'"):
        TrainConfig(compile="eager")


# ---- shared data keys: one base, ranges merged down the class hierarchy ------------------------------------

@dataclasses.dataclass
class _OwnData(SplitData, StreamingData, SkipBadSamples):
    """A recipe's own data section: the shared keys from the bases, one ranged key of its own."""

    RANGES: ClassVar[dict[str, str]] = {"max_length": ">0"}
    max_length: int = 8


@dataclasses.dataclass
class _Narrower(_OwnData):
    RANGES: ClassVar[dict[str, str]] = {"eval_fraction": "(0, 0.5]"}  # overrides the base's (0, 1) only


@dataclasses.dataclass
class _Section:
    data: _OwnData = dataclasses.field(default_factory=_OwnData)


def test_a_data_section_inherits_the_shared_keys_with_their_defaults():
    d = _OwnData()
    assert (d.train_file, d.eval_file, d.eval_fraction, d.generate) == ("", "", 0.1, None)
    assert (d.streaming, d.shuffle_block, d.skip_bad_samples) == (False, 1000, False)
    assert (d.remote_cache_dir, d.remote_cache_gb, d.remote_retries) == ("", 20.0, 5)
    assert _OwnData.RANGES == {"eval_fraction": "(0, 1)", "remote_cache_gb": ">0", "remote_retries": ">=0",
                               "shuffle_block": ">0", "max_length": ">0"}
    assert declared(_OwnData, "RANGES") == _OwnData.RANGES


@pytest.mark.parametrize("key,value", [("eval_fraction", 1.0), ("eval_fraction", 0.0), ("shuffle_block", 0),
                                       ("max_length", 0), ("remote_cache_gb", 0), ("remote_retries", -1)])
def test_a_subclass_checks_the_base_ranges_and_its_own(key, value):
    cfg = _Section()
    setattr(cfg.data, key, value)
    with pytest.raises(ConfigError, match=rf"'data\.{key}'.*out of range"):
        validate(cfg)
    validate(_Section())  # the defaults are in range


def test_a_subclass_overrides_one_base_range_and_keeps_the_rest():
    assert _Narrower.RANGES["eval_fraction"] == "(0, 0.5]" and _Narrower.RANGES["shuffle_block"] == ">0"
    assert _OwnData.RANGES["eval_fraction"] == "(0, 1)"  # the parent's declaration is untouched
    validate(_Narrower(eval_fraction=0.5))
    with pytest.raises(ConfigError, match=r"'eval_fraction'.*must be \(0, 0\.5\]"):
        validate(_Narrower(eval_fraction=0.6))
    with pytest.raises(ConfigError, match=r"'shuffle_block'"):
        validate(_Narrower(shuffle_block=-1))


def test_every_recipe_data_section_declares_the_shared_keys_once():
    """The split keys come from SplitData (one declaration, one range) in every recipe that reads a file."""
    from mm_ptft.tasks import get_recipe

    for name in ("text_classification", "text_regression", "image_classification", "speech_recognition",
                 "detection", "multimodal_classification", "pretrain_contrastive", "pretrain_masked",
                 "pretrain_joint"):
        data = get_recipe(name).config_cls().data
        assert isinstance(data, SplitData), name
        assert type(data).RANGES["eval_fraction"] == "(0, 1)", name
        if isinstance(data, StreamingData):
            assert type(data).RANGES["shuffle_block"] == ">0", name
