import pytest

from mm_ptft.config import ConfigError
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
