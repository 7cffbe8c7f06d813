"""Image and video classification, speech recognition (CTC and Whisper), multimodal classification, the map-style
pretraining recipes (contrastive, masked, captioning, joint), causal-LM SFT and seq2seq through the preprocessing cache (text classification and regression: test_cached_tables.py): the same
weights after N steps with the cache off, on a miss and on a hit; a changed setting (a check, max_length) makes a new
entry; a hit checks no media file again."""
import os

import pytest
import torch

from mm_ptft.data.generated import generate
from mm_ptft.run import load_config
from mm_ptft.run.check_data import check_data
from mm_ptft.tasks import get_recipe
from mm_ptft.train.rng import seed_everything
from mm_ptft.train.trainer import Trainer

from mm_paths import ROOT

STEPS = 2
IMAGES = {"name": "image_shapes", "n_train": 16, "n_eval": 8, "size": 16, "seed": 4, "classes": ["circle", "square"]}
TONES = {"name": "tone_speech", "n_train": 6, "n_eval": 3, "sample_rate": 16000, "seed": 2}
WHISPER = ["model.whisper.config.d_model=32", "model.whisper.config.encoder_layers=1",
           "model.whisper.config.decoder_layers=1", "model.whisper.config.encoder_ffn_dim=64",
           "model.whisper.config.decoder_ffn_dim=64", "generation.max_new_tokens=4"]
SFT = {"name": "sft_toy", "n_train": 24, "n_eval": 8, "seed": 0, "ops": ["add"]}
PAIRS = {"name": "seq2seq_toy", "n_train": 24, "n_eval": 8, "seed": 0, "ops": ["reverse"]}
VIDEOS = {"name": "moving_shapes", "n_train": 8, "n_eval": 4, "size": 32, "frames": 6, "speed": 2.0, "seed": 0}
SHAPES = {"name": "shapes_captions", "n_train": 16, "n_eval": 8, "image_size": 32, "sample_rate": 8000, "seed": 0}
GEN = ["generation.max_new_tokens=2"]
CASES = {  # recipe → (tiny config, generator, overrides, a setting that changes the preprocessed rows)
    "image_classification": ("image_classification", {**IMAGES, "layout": "folders"}, ["model.image.img_size=16"],
                             "data.verify_images=false"),
    "speech_recognition": ("speech_recognition", TONES, ["train.num_workers=0"], "data.max_duration=10"),
    "whisper_asr": ("whisper_asr", {**TONES, "max_words": 2}, WHISPER, "data.max_duration=10"),
    "video_classification": ("video_classification", VIDEOS, ["train.num_workers=0"], "data.verify_videos=false"),
    "pretrain_contrastive": ("pretrain_contrastive", SHAPES, [], "data.max_length=6"),
    "pretrain_masked": ("pretrain_masked", SHAPES, ["data.modalities=[text,image]", "model.image={name: tiny_cnn, "
                        "widths: [8, 16], img_size: 32}", "model.objective={name: conditioned_mlm, modality: image}"],
                        "data.overlong_text=skip"),
    "pretrain_captioning": ("pretrain_captioning", SHAPES, [], "data.max_length=6"),
    "pretrain_joint": ("pretrain_joint", SHAPES, [], "data.max_audio_seconds=0.3"),
    "causal_lm_sft": ("causal_lm_sft", SFT, [*GEN, "model.lm.config={model_type: gpt2, n_embd: 32, n_layer: 1, "
                                            "n_head: 2, n_positions: 64}"], "data.max_length=48"),
    "seq2seq": ("seq2seq", PAIRS, GEN, "data.max_source_length=24"),
    "multimodal_classification": ("multimodal_classification", IMAGES,
                                  ["data.modalities=[image]", "data.image_column=path", "model.image.img_size=16"],
                                  "data.skip_bad_samples=true"),
}


def recipe_file(case):
    return os.path.join(ROOT, "recipes", CASES[case][0], "tiny.yaml")


def overrides(tmp_path, case, files, run, *extra):
    files = [f"data.{k}={v}" for k, v in files.items()]
    return [f"output_dir={tmp_path / run}", "train.report=false", "train.report_to=[]", "data.generate=null",
            f"train.max_steps={STEPS}", "train.eval_every=0", "train.batch_size=4", "train.device=cpu",
            f"data.cache_dir={tmp_path / 'cache'}", *files, *CASES[case][2], *extra]


def config(tmp_path, case, files, run, *extra):
    return load_config(recipe_file(case), overrides(tmp_path, case, files, run, *extra))


def fit(c):
    seed_everything(c.seed)  # as run.train does before preparing: the same initial weights in every arm
    prepared = get_recipe(c.task).prepare(c)
    Trainer.from_prepared(prepared, c).fit()
    return {k: v.detach().clone() for k, v in prepared.task.state_dict().items()}, prepared


def entries(tmp_path):
    root = tmp_path / "cache"
    return sorted(p for p in os.listdir(root) if not p.endswith(".lock")) if root.is_dir() else []


@pytest.mark.parametrize("case", list(CASES))
def test_same_weights_off_miss_hit_and_a_new_entry_per_setting(tmp_path, case, monkeypatch):
    files = generate(CASES[case][1], tmp_path / "data")
    off, p_off = fit(config(tmp_path, case, files, "off", "data.cache=false"))
    assert p_off.train_data.cache.state == "off" and entries(tmp_path) == []
    miss, p_miss = fit(config(tmp_path, case, files, "miss"))
    import mm_ptft.data.audio as audio
    import mm_ptft.data.image as image
    import mm_ptft.data.multimodal_rows as rows
    import mm_ptft.data.video as video

    checks = ((image, "image_problem"), (audio, "probe"), (rows, "usable_media"), (video, "video_problem"))
    for module, name in checks:  # a hit checks nothing
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail(f"{name} called on a hit"))
    hit, p_hit = fit(config(tmp_path, case, files, "hit"))
    monkeypatch.undo()
    assert (p_miss.train_data.cache.state, p_hit.train_data.cache.state) == ("miss", "hit")
    assert len(p_hit.train_data) == len(p_off.train_data) > 0 and p_hit.counters == p_off.counters
    for k in off:
        assert torch.equal(off[k], miss[k]) and torch.equal(off[k], hit[k]), k
    assert len(entries(tmp_path)) == 1
    get_recipe(case).prepare(config(tmp_path, case, files, "other", CASES[case][3]))
    assert len(entries(tmp_path)) == 2


@pytest.mark.parametrize("case", ["whisper_asr", "video_classification", "pretrain_contrastive", "pretrain_masked",
                                  "pretrain_joint", "causal_lm_sft", "seq2seq"])
def test_check_data_reports_the_entry(tmp_path, case):
    files = generate(CASES[case][1], tmp_path / "data")
    first = check_data(recipe_file(case), overrides(tmp_path, case, files, "a"))["cache"]
    second = check_data(recipe_file(case), overrides(tmp_path, case, files, "b"))["cache"]
    assert (first["state"], second["state"]) == ("miss", "hit") and first["path"] == second["path"]
    assert os.path.dirname(second["path"]) == str(tmp_path / "cache") and second["size_bytes"] > 0
    assert second["describe"].startswith(f"cache: hit {second['path']}")
