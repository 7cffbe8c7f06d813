"""Speech recognition (CTC): fine-tune any audio encoder (HF wav2vec2/HuBERT/WavLM/Whisper encoder,
torchaudio Conformer/wav2vec2, or the built-in tiny one) with a linear CTC head over characters.

    python recipes/speech_recognition/train.py recipes/speech_recognition/tiny.yaml [key.sub=value ...]

This is the whole path `mm-ptft train` takes, written out so it can be copied and edited.
"""
import json
import sys

from mm_ptft.config import load_config
from mm_ptft.tasks.speech_recognition import SpeechRecognition, SpeechRecognitionConfig
from mm_ptft.train.trainer import Trainer, seed_everything


def main(argv: list[str]) -> dict:
    # 1. The config: the recipe YAML, then `key.sub=value` overrides; unknown keys are errors.
    cfg = load_config(argv[0], argv[1:], schema=SpeechRecognitionConfig)
    seed_everything(cfg.seed)

    # 2. Data and model: manifests (audio path + transcript) through HF datasets, audio decoded with
    #    soundfile, mixed to mono and resampled to the encoder's rate; bad files and durations out of
    #    range are errors or counted skips. The character vocabulary is learned from the training
    #    transcripts and written into the resolved config (model.vocab) so eval/predict rebuild it.
    prepared = SpeechRecognition.prepare(cfg)
    print(f"{len(prepared.train_data)} train / {len(prepared.eval_data)} eval clips, "
          f"{len(cfg.model.vocab)} CTC tokens, encoder {type(prepared.task.encoder).__name__}, "
          f"data counters {prepared.counters}", file=sys.stderr)

    # 3. Train: clips of similar duration batched together (train_lengths), CTC loss, WER/CER
    #    on the eval split (model.decoder: greedy or torchaudio's beam search).
    trainer = Trainer(prepared.task, cfg, prepared.train_data, prepared.eval_data, prepared.collate,
                      train_lengths=prepared.train_lengths, eval_lengths=prepared.eval_lengths,
                      counters=prepared.counters)
    results = trainer.fit()

    # 4. The run directory holds config.yaml, metrics.jsonl, checkpoints/, final_metrics.json
    #    (wer, cer), encoders/audio/ and report.md. Transcribe files with
    #    `mm-ptft predict RUN_DIR a.wav b.flac`.
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
