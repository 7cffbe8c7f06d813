"""The whisper_asr tiny.yaml path (its train.py, trainer, generation, WER) learns: trained on 32 generated tone-speech
clips it transcribes those clips (evaluated as its eval set) far better than answering every clip with the most
frequent transcript (that baseline's WER computed here with jiwer from the generated manifest).

tiny.yaml as shipped also learns: on its generated set's unseen eval speakers its WER is well below the eval
transcripts' own most-frequent-transcript baseline (docs/howto/whisper_asr.md § Measured)."""
from __future__ import annotations

import csv
import json
import runpy
from collections import Counter
from pathlib import Path

import jiwer
import pytest

from mm_fixtures import one_thread  # noqa: F401  (autouse: one intra-op thread)

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "whisper_asr"


@pytest.mark.slow
def test_tiny_fits_its_training_clips_far_below_the_most_frequent_transcript(tmp_path):
    import mm_ptft.data.generated.audio  # noqa: F401  (registers tone_speech)
    from mm_ptft.data.generated import generate

    files = generate({"name": "tone_speech", "n_train": 32, "n_eval": 4, "sample_rate": 16000, "seed": 0},
                     str(tmp_path / "data"))
    refs = [r["text"] for r in csv.DictReader(open(files["train_file"]))]
    baseline = jiwer.wer(refs, [Counter(refs).most_common(1)[0][0]] * len(refs))
    main = runpy.run_path(str(RECIPE / "train.py"))["main"]
    results = main([str(RECIPE / "tiny.yaml"), f"output_dir={tmp_path / 'run'}", "data.generate=null",
                    f"data.train_file={files['train_file']}", f"data.eval_file={files['train_file']}",
                    "train.batch_size=32", "train.max_steps=300", "train.eval_every=300", "sched.warmup_steps=20",
                    "optim.lr=0.001", "model.whisper.config.dropout=0.0", "data.augment.speed_factors=[]",
                    "data.augment.freq_mask_width=0", "data.augment.time_mask_width=0", "train.report=false"])
    final = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert final["wer"] == pytest.approx(results["wer"])
    assert baseline > 0.9  # 1-3 words drawn from 26: one fixed answer is almost always wrong
    assert results["wer"] < baseline - 0.5, (results, baseline)


@pytest.mark.slow
def test_tiny_yaml_learns_unseen_speakers_far_below_the_most_frequent_transcript(tmp_path):
    """tiny.yaml as shipped (600 generated clips, 400 steps): eval speakers are unseen, and the generated WER is well
    below answering every eval clip with its most frequent transcript (jiwer on the eval manifest)."""
    main = runpy.run_path(str(RECIPE / "train.py"))["main"]
    results = main([str(RECIPE / "tiny.yaml"), f"output_dir={tmp_path / 'run'}", "train.report=false"])
    eval_csv = next((tmp_path / "run").glob("generated_data/*/eval.csv"))
    refs = [r["text"] for r in csv.DictReader(eval_csv.read_text().splitlines())]
    baseline = jiwer.wer(refs, [Counter(refs).most_common(1)[0][0]] * len(refs))
    print(f"eval WER {results['wer']:.3f}, most-frequent-transcript baseline {baseline:.3f}")
    assert baseline > 0.9
    assert results["wer"] < 0.7 * baseline, (results, baseline)
