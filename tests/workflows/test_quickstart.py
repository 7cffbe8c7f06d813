"""The README's main job: pretrain, few-label fine-tuning, table and report."""
import json

import pytest

from mm_ptft.workflows.quickstart import SETUPS, run_quickstart


def test_quickstart_short_run_writes_table_and_report(tmp_path):
    summary = run_quickstart(str(tmp_path), steps=10, per_class=2)
    assert set(summary["few_label_accuracy"]) == set(SETUPS)
    for accs in summary["few_label_accuracy"].values():
        assert set(accs) == {"pretrained", "scratch"} and all(0 <= v <= 1 for v in accs.values())
    report = (tmp_path / "report.md").read_text()
    assert "| multimodal (gated fusion) |" in report and (tmp_path / "pretrained_vs_scratch.png").stat().st_size > 0
    assert (tmp_path / "pretrain" / "encoders" / "image" / "mm_ptft_encoder.json").exists()
    # both arms share the pretraining run's vocabulary (scratch did learn its own from the few labelled captions)
    vocab = lambda path: json.loads(path.read_text())["model"]["vocab"]  # noqa: E731
    pretrained = vocab(tmp_path / "pretrain" / "tokenizer" / "tokenizer.json")
    for run in ("ft_text_scratch", "ft_audio_image_text_scratch", "ft_text_pretrained"):
        assert vocab(tmp_path / run / "encoders" / "text" / "tokenizer.json") == pretrained, run


@pytest.mark.slow
def test_default_quickstart_pretraining_pays_off(tmp_path):
    """The default run (about a minute on 2 cores): pretrained beats scratch where the README says so."""
    acc = run_quickstart(str(tmp_path))["few_label_accuracy"]
    for setup in ("multimodal (gated fusion)", "audio only", "text only"):
        assert acc[setup]["pretrained"] > acc[setup]["scratch"] + 0.05, (setup, acc[setup])
