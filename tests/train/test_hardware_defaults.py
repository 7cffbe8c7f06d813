"""CPU-honest defaults: precision auto resolves by the hardware, emulated bf16, over-long warm-up and more
loader workers than CPUs each warn (and the workers are capped), and the run still trains."""
import warnings

import pytest

from mm_ptft import env
from mm_ptft.run import load_config
from mm_ptft.run import train
from mm_ptft.train.rundir import final_results

from mm_paths import TEXT_TINY


def _run(tmp_path, *extra: str) -> list[str]:
    cfg = load_config(TEXT_TINY, [f"output_dir={tmp_path}", "train.max_steps=2", "train.report=false", *extra])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg)
    assert final_results(tmp_path)
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_default_precision_is_auto() -> None:
    assert load_config(TEXT_TINY, ["train.precision=auto"]).train.precision == "auto"
    from mm_ptft.config import TrainConfig

    assert TrainConfig().precision == "auto"


def test_emulated_bf16_warmup_and_workers_warn(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(env, "cpu_native_bf16", lambda: False)
    monkeypatch.setattr("mm_ptft.train.trainer.cpu_count", lambda: 1)
    msgs = _run(tmp_path, "train.precision=bf16", "sched.warmup_steps=5", "train.num_workers=3")
    assert any("train.precision=bf16" in m and "emulates" in m for m in msgs), msgs
    assert any("sched.warmup_steps=5 >= the run's 2 optimizer steps" in m for m in msgs), msgs
    assert any("train.num_workers=3 > the 1 CPUs" in m and "using 1" in m for m in msgs), msgs


def test_auto_on_a_cpu_without_native_bf16_trains_in_fp32(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(env, "cpu_native_bf16", lambda: False)
    seen = {}
    from mm_ptft.train import trainer as T

    real_init = T.Trainer.__init__

    def spy(self, *a, **kw):
        real_init(self, *a, **kw)
        seen["precision"], seen["amp"] = self.precision, self.amp_dtype

    monkeypatch.setattr(T.Trainer, "__init__", spy)
    msgs = _run(tmp_path, "train.precision=auto")
    assert seen == {"precision": "fp32", "amp": None}
    assert not any("emulates" in m for m in msgs)


def test_unknown_precision_names_the_key(tmp_path) -> None:
    from mm_ptft.config import ConfigError

    with pytest.raises(ConfigError, match="train.precision='bf32'"):
        _run(tmp_path, "train.precision=bf32")
