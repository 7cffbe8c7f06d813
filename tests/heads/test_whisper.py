"""Whisper encoder-decoder head: our loss equals ``WhisperForConditionalGeneration``'s own on a batch built by our
data path, labels are the tokenizer's prefix + text + EOT with the decoder start stripped, ``generate`` forces the
language/task prefix, ``freeze_encoder`` freezes the encoder half only, and WER/CER of generated text match jiwer."""
from __future__ import annotations

import jiwer
import numpy as np
import pytest
import torch

from mm_ptft.config import ConfigError
from mm_ptft.contracts import GenerationConfig
from mm_ptft.data.audio import AudioCollator, AugmentConfig
from mm_ptft.data.tables import DataError
from mm_ptft.data.whisper import WhisperPipeline, fits
from mm_ptft.heads.whisper import NO_TIMESTAMPS, SOT, WhisperTask, build_whisper, prefix_labels, shift_right
from mm_ptft.metrics.ctc import TranscriptMetrics
from mm_ptft.types import AUDIO, IGNORE_INDEX, LABELS, TRANSCRIPTS

TEXTS = ["cat dog", "sun red big", "moon tree", "fish bird star", "a b c d e"]
CONFIG = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 2, "encoder_attention_heads": 2,
          "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "max_source_positions": 50,
          "max_target_positions": 24}


@pytest.fixture(scope="module")
def whisper():
    torch.manual_seed(0)
    return build_whisper({"config": CONFIG, "vocab_size": 300}, TEXTS * 4)


def batch_of(whisper, texts, seed=0):
    rng = np.random.default_rng(seed)
    pipe = WhisperPipeline(whisper.processor.feature_extractor)
    items = [{AUDIO: pipe.process(torch.from_numpy(rng.normal(0, 0.1, 8000 + 1000 * i).astype(np.float32))),
              LABELS: prefix_labels(whisper.tokenizer, t), TRANSCRIPTS: t} for i, t in enumerate(texts)]
    return AudioCollator(pad_id=IGNORE_INDEX)(items)


def test_window_follows_the_config_and_features_are_the_processors(whisper):
    fe = whisper.processor.feature_extractor
    assert fe.n_samples == 16000 and fe.nb_max_frames == 100  # 50 positions x 2 convs' stride x 10 ms
    wav = np.random.default_rng(1).normal(0, 0.1, 12000).astype(np.float32)
    ours = WhisperPipeline(fe).process(torch.from_numpy(wav))
    ref = whisper.processor(wav, sampling_rate=16000, return_tensors="pt").input_features[0]
    assert torch.equal(ours, ref)


def test_labels_are_prefix_text_eot_without_decoder_start(whisper):
    tok = whisper.tokenizer
    ids = prefix_labels(tok, "cat dog")
    full = tok("cat dog").input_ids
    assert full[0] == tok.convert_tokens_to_ids(SOT) and ids == full[1:]
    assert tok.convert_ids_to_tokens(ids[:3]) == ["<|en|>", "<|transcribe|>", NO_TIMESTAMPS]
    assert ids[-1] == tok.eos_token_id and tok.decode(ids, skip_special_tokens=True) == " cat dog"  # leading space
    # a word has the same pieces first in a phrase as later (the learnt tokenizer adds the leading space)
    def pieces(text):
        return tok.convert_ids_to_tokens(prefix_labels(tok, text))[3:-1]

    cat, dog = pieces("cat"), pieces("dog")
    assert pieces("cat dog") == cat + dog and pieces("dog cat") == dog + cat, (cat, dog, pieces("cat dog"))
    labels = torch.tensor([[5, 6, IGNORE_INDEX]])
    assert shift_right(labels, 0, 9).tolist() == [[9, 5, 6]]


def test_loss_equals_transformers_own_loss(whisper):
    task = WhisperTask(whisper, GenerationConfig(max_new_tokens=8)).eval()  # the tiny config has no dropout: train mode would give the same
    batch = batch_of(whisper, TEXTS)
    assert (batch[LABELS] == IGNORE_INDEX).any()  # padded rows of different lengths
    ours = task(batch)["seq2seq_loss"]
    theirs = whisper.model(input_features=batch[AUDIO], labels=batch[LABELS]).loss
    assert abs(float(ours) - float(theirs)) <= 1e-5
    # and by hand: mean token NLL over the labelled positions
    logits = whisper.model(input_features=batch[AUDIO],
                           decoder_input_ids=shift_right(batch[LABELS], whisper.model.config.pad_token_id,
                                                         whisper.model.config.decoder_start_token_id)).logits
    lp = logits.log_softmax(-1)
    keep = batch[LABELS] != IGNORE_INDEX
    nll = -lp.gather(-1, batch[LABELS].clamp(min=0)[..., None])[..., 0][keep].mean()
    assert abs(float(nll) - float(ours)) <= 1e-5


def test_generate_forces_the_language_and_task_prefix(whisper):
    batch = batch_of(whisper, TEXTS[:2])
    out = whisper.model.generate(input_features=batch[AUDIO], max_new_tokens=3, return_dict_in_generate=True)
    seq = out.sequences if hasattr(out, "sequences") else out
    task = WhisperTask(whisper, GenerationConfig(max_new_tokens=8)).eval()
    ids = task.generate_ids(batch[AUDIO])
    assert ids.shape[0] == 2 and ids.shape[1] <= task.generation.max_new_tokens
    assert len(task.generate(batch)) == 2 and seq.shape[0] == 2
    gc = whisper.model.generation_config
    assert gc.language == "en" and gc.task == "transcribe" and gc.lang_to_id["<|en|>"] == \
        whisper.tokenizer.convert_tokens_to_ids("<|en|>")


def test_max_new_tokens_must_leave_room_for_the_prefix(whisper):
    with pytest.raises(ConfigError, match=r"generation.max_new_tokens=21 .*24 positions - 4 prefix tokens = 20"):
        WhisperTask(whisper, GenerationConfig(max_new_tokens=21))


def test_freeze_encoder_strategy_freezes_the_encoder_half_only(whisper):
    from mm_ptft.config import FinetuneConfig
    from mm_ptft.train.finetune import apply_finetune

    torch.manual_seed(0)
    w = build_whisper({"config": CONFIG, "processor": None, "vocab_size": 300}, TEXTS * 4)
    task = WhisperTask(w, GenerationConfig(max_new_tokens=8))
    apply_finetune(task, FinetuneConfig(strategy="freeze_encoder"))
    enc = [p.requires_grad for n, p in task.named_parameters() if ".encoder." in n]
    dec = [p.requires_grad for n, p in task.named_parameters() if ".decoder." in n]
    assert enc and not any(enc) and dec and all(dec)
    with pytest.raises(ConfigError, match="finetune.strategy=freeze_encoder"):
        apply_finetune(torch.nn.Linear(2, 2), FinetuneConfig(strategy="freeze_encoder"))


def test_fits_names_the_clip_or_counts(whisper):
    pipe = WhisperPipeline(whisper.processor.feature_extractor, AugmentConfig(speed_factors=[0.9, 1.0]), train=True)
    counters: dict[str, int] = {}
    assert fits(14000, [1] * 5, pipe, 24, "error", False, "m.csv: row 3", counters)
    with pytest.raises(DataError, match=r"m.csv: row 3: .*over the model's 1 s window"):
        fits(15000, [1] * 5, pipe, 24, "error", False, "m.csv: row 3", counters)  # 15000 / 0.9 > 16000
    assert not fits(15000, [1] * 5, pipe, 24, "skip", False, "x", counters)
    with pytest.raises(DataError, match=r"row 4: the transcript is 25 tokens, over the decoder's 24"):
        fits(100, [1] * 25, pipe, 24, "error", False, "m.csv: row 4", counters)
    assert not fits(100, [1] * 25, pipe, 24, "error", True, "x", counters)
    assert counters == {"skipped_over_window": 1, "skipped_overlong_transcript": 1}


def test_spec_augment_and_speed_perturbation_apply_in_training(whisper):
    fe = whisper.processor.feature_extractor
    aug = AugmentConfig(speed_factors=[0.5], freq_mask_width=20, freq_masks=2, time_mask_width=20, time_masks=2)
    wav = torch.from_numpy(np.random.default_rng(2).normal(0, 0.1, 6000).astype(np.float32))
    torch.manual_seed(0)
    trained = WhisperPipeline(fe, aug, train=True)
    assert trained.augment_waveform(wav).shape[-1] == 12000  # half speed: twice as long
    feats = trained.process(wav)
    assert feats.shape == (80, 100) and (feats == 0).any() and not torch.equal(feats, WhisperPipeline(fe).process(wav))


def test_transcript_metrics_match_jiwer():
    m = TranscriptMetrics()
    hyps, refs = ["cat dog", "sun big", ""], ["cat dog", "sun red big", "moon"]
    m.update({"generated": hyps[:2]}, {TRANSCRIPTS: refs[:2]})
    m.update({"generated": hyps[2:]}, {TRANSCRIPTS: refs[2:]})
    got = m.compute()
    assert got["wer"] == pytest.approx(jiwer.wer(refs, hyps)) and got["cer"] == pytest.approx(jiwer.cer(refs, hyps))
