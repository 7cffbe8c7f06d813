"""N-gram LMs for a CTC speech run. ``mm-ptft build-lm CONFIG --out lm.arpa``: a word n-gram LM (ARPA, orders 2-3,
the built-in writer of ``heads.ngram_lm``) from a speech config's training transcripts, normalised exactly as the
recipe normalises them (the eval split is left out). ``mm-ptft tune-lm RUN_DIR --lm lm.arpa``: an opt-in grid over
``lm_weight`` x ``word_score`` on the run's eval split (the model runs once; each point re-decodes the same
log-probs), written to ``RUN_DIR/lm/tuning.json``; the best point becomes the run's ``model.decoder`` (the LM copied
into ``RUN_DIR/lm/``, so the run stays relocatable) when it beats the decoder the run had."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from mm_ptft.contracts import on_device
from mm_ptft.heads.ctc import CTCTask, Transcriber, normalize_text, parse_decoder
from mm_ptft.heads.ngram_lm import build_lm
from mm_ptft.metrics.ctc import CTCMetrics
from mm_ptft.tasks import load_config
from mm_ptft.tasks.common import eval_name, load_run, load_splits
from mm_ptft.train import rundir, runlock
from mm_ptft.types import TRANSCRIPTS

DEFAULT_WEIGHTS = (0.5, 1.0, 2.0, 3.0)
DEFAULT_WORD_SCORES = (-1.0, 0.0, 1.0, 2.0)


def train_transcripts(cfg: Any) -> Iterator[str]:
    """The normalised transcripts of ``data.train_file`` (a table, or with ``data.streaming`` manifest shards),
    without the seeded eval split when there is no ``data.eval_file``."""
    from mm_ptft.data.shards import column_batches
    from mm_ptft.tasks import streaming as S

    d = cfg.data
    norm = lambda t: normalize_text(t or "", d.lowercase, d.strip_punctuation)  # noqa: E731
    if d.streaming:
        shards = S.shards_of(cfg, True)[0]
        if not shards or any(s.kind == "tar" for s in shards):
            raise ValueError("build-lm reads transcripts from a table or manifest data.train_file, not tar shards")
        yield from (norm(t) for batch in column_batches(shards, d.text_column) for t in batch)
        return
    train, _ = load_splits(cfg, True, True)
    if train is None:
        raise ValueError("build-lm needs data.train_file (the transcripts to count)")
    if d.text_column not in train.column_names:
        raise ValueError(f"{d.train_file}: no transcript column data.text_column={d.text_column!r}")
    yield from (norm(t) for t in train[d.text_column])


@dataclass
class BuiltLM:
    path: Path
    sentences: int  # non-empty transcripts counted
    skipped_empty: int  # transcripts empty after normalisation
    words: int  # distinct words (the LM's unigrams, less <s> </s> <unk>)


def build_lm_from_config(config: Any, out: str | Path, overrides: Sequence[str] = (), order: int = 3,
                         discount: float = 0.5) -> BuiltLM:
    """An ARPA LM from the training transcripts of a speech config: a recipe YAML, or a run directory (its
    ``config.yaml``, with the paths inside the run resolved where the run now lies)."""
    if Path(config).is_dir():
        overrides = [f"output_dir={json.dumps(str(Path(config).resolve()))}", *overrides]
        config = Path(config) / "config.yaml"
    cfg = load_config(config, overrides)
    if cfg.task != "speech_recognition":
        raise ValueError(f"build-lm reads speech_recognition configs (task={cfg.task!r})")
    texts = list(train_transcripts(cfg))
    kept = [t for t in texts if t]
    path = build_lm(kept, out, order, discount)
    return BuiltLM(path, len(kept), len(texts) - len(kept), len({w for t in kept for w in t.split()}))


@torch.no_grad()
def eval_log_probs(prepared: Any, batch_size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """(log-probs (B, N, V), frame lengths (B,), reference transcripts) per eval batch: the model runs once."""
    from torch.utils.data import DataLoader

    task: CTCTask = prepared.task
    device = next(task.parameters()).device
    out = []
    for batch in DataLoader(prepared.eval_data, batch_size=batch_size, collate_fn=prepared.collate):
        refs = list(batch[TRANSCRIPTS])
        batch = on_device(prepared.collate, {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()},
                          device)
        o = task(batch)
        out.append((o["log_probs"].cpu(), o["frame_lengths"].cpu(), refs))  # (B, N, V), (B,)
    return out


def score(transcriber: Transcriber, batches: Sequence[tuple[torch.Tensor, torch.Tensor, list[str]]]) -> dict:
    """WER/CER of ``transcriber`` over cached eval batches, through the recipe's own metric (torchmetrics)."""
    metrics = CTCMetrics(transcriber)
    for lp, n, refs in batches:
        metrics.update({"log_probs": lp, "frame_lengths": n}, {TRANSCRIPTS: refs})
    return metrics.compute()


def _better(a: dict, b: dict) -> bool:
    return (a["wer"], a["cer"]) < (b["wer"], b["cer"])


def tune_lm(run_dir: str | Path, lm: str | Path, weights: Sequence[float] = DEFAULT_WEIGHTS,
            word_scores: Sequence[float] = DEFAULT_WORD_SCORES, overrides: Sequence[str] = (),
            apply: bool = True) -> dict[str, Any]:
    """Grid ``lm_weight`` x ``word_score`` on the run's eval split (``overrides`` may point ``data.eval_file`` at a
    dev set); write ``RUN_DIR/lm/tuning.json``; with ``apply``, set the best point as the run's ``model.decoder``
    when it beats (WER, then CER) the decoder the run had."""
    run_dir, lm = Path(run_dir), Path(lm)
    if not lm.is_file():
        raise FileNotFoundError(f"--lm {str(lm)!r} does not exist; build one with "
                                f"`mm-ptft build-lm CONFIG --out lm.arpa`")
    runlock.acquire(run_dir, "tune-lm")
    try:
        cfg, prepared, _ = load_run(run_dir, overrides)
        if prepared.eval_data is None:
            raise ValueError(f"{run_dir}: no evaluation data to tune on; pass data.eval_file=PATH")
        kept = run_dir / "lm" / lm.name
        if kept.resolve() != lm.resolve():
            kept.parent.mkdir(exist_ok=True)
            shutil.copyfile(lm, kept)
        report = _grid(cfg, prepared, kept, weights, word_scores)
        report["applied"] = apply and _better(report["best"], report["run_decoder"])
        if report["applied"]:
            _set_decoder(run_dir, report["best"]["decoder"])
        (run_dir / "lm" / "tuning.json").write_text(json.dumps(report, indent=1) + "\n")
        return report
    finally:
        runlock.release(run_dir)


def _grid(cfg: Any, prepared: Any, lm: Path, weights: Sequence[float], word_scores: Sequence[float]) -> dict:
    m, vocab = cfg.model, prepared.task.vocab
    batches = eval_log_probs(prepared)
    decode = lambda spec: score(Transcriber(vocab, spec, m.beam_size, m.lexicon), batches)  # noqa: E731
    rows = []
    for w in weights:
        for s in word_scores:
            spec = {"name": "beam", "lm": str(lm), "lm_weight": float(w), "word_score": float(s)}
            parse_decoder(spec)
            rows.append({"lm_weight": float(w), "word_score": float(s), **decode(spec)})
    rows.sort(key=lambda r: (r["wer"], r["cer"]))
    best = {**rows[0], "decoder": {"name": "beam", "lm": f"lm/{lm.name}", "lm_weight": rows[0]["lm_weight"],
                                   "word_score": rows[0]["word_score"]}}
    return {"eval": eval_name(cfg.data), "utterances": sum(len(r) for _, _, r in batches), "lm": f"lm/{lm.name}",
            "greedy": decode("greedy"), "beam": decode("beam"),
            "run_decoder": {"decoder": m.decoder, **decode(m.decoder)}, "best": best, "grid": rows}


def _set_decoder(run_dir: Path, decoder: dict[str, Any]) -> None:
    """Rewrite the run's ``config.yaml`` with ``model.decoder`` set (the LM path inside the run, so written as
    ``${output_dir}/lm/…``); every other key as the run saved it."""
    cfg = load_config(run_dir / "config.yaml", [f"output_dir={json.dumps(str(run_dir.resolve()))}"])
    cfg.model.decoder = {**decoder, "lm": str((run_dir / decoder["lm"]).resolve())}
    part = run_dir / "config.yaml.part"
    part.write_text(rundir.config_yaml(cfg))
    part.replace(run_dir / "config.yaml")
