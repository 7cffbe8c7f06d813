"""Fixtures and builders shared by several test modules (a uniquely named module: tests must not
import from ``conftest``). Import a fixture by name into a module to use it there."""
from __future__ import annotations

import signal
import subprocess
import time
from typing import Sequence

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_encoders(dim: int, img_size: int, corpus: Sequence[str], vocab_size: int = 100) -> dict:
    """Tiny text (WordPiece learned from ``corpus``), image and 8 kHz audio encoders of width ``dim``."""
    from mm_ptft.encoders import TEXT_ENCODERS, build_encoder
    from mm_ptft.encoders.audio import AUDIO_ENCODERS
    from mm_ptft.encoders.image import IMAGE_ENCODERS

    torch.manual_seed(0)
    return {
        "text": build_encoder(TEXT_ENCODERS, {"name": "tiny", "dim": dim, "depth": 1, "heads": 2,
                                              "vocab_size": vocab_size}, "model.text", corpus=list(corpus)),
        "image": build_encoder(IMAGE_ENCODERS, {"name": "tiny_cnn", "widths": [8, 16], "img_size": img_size},
                               "model.image"),
        "audio": build_encoder(AUDIO_ENCODERS, {"name": "tiny", "sample_rate": 8000, "n_mels": 16, "dim": dim,
                                                "depth": 1, "heads": 2}, "model.audio"),
    }


def ctc_tokenizer_dir(root, letters: str) -> str:
    """A Wav2Vec2CTCTokenizer directory over ``letters`` (+ <pad> <s> </s> <unk> |) written with
    save_pretrained under ``root``, as a wav2vec2 CTC checkpoint ships it."""
    import json
    from pathlib import Path

    from transformers import Wav2Vec2CTCTokenizer

    root = Path(root) / f"ctc_tokenizer_{letters.encode().hex()[:16]}"
    root.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: i + 5 for i, c in enumerate(letters)}}
    (root / "vocab.json").write_text(json.dumps(vocab))
    Wav2Vec2CTCTokenizer(str(root / "vocab.json")).save_pretrained(str(root / "tok"))
    return str(root / "tok")


def kill_after_checkpoint(cmd, env, ckpt_root, step, timeout=180.0, cwd=None):
    """Start ``cmd``; SIGKILL it as soon as the checkpoint of ``step`` exists. Returns the exit code."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    target, deadline = ckpt_root / f"step_{step:08d}", time.time() + timeout
    try:
        while not target.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode


def resume_from_copy(straight, resumed, step: int) -> None:
    """Start run ``resumed`` from ``straight``'s checkpoint at ``step`` alone (with its config)."""
    import shutil

    name = f"step_{step:08d}"
    shutil.copytree(straight / "checkpoints" / name, resumed / "checkpoints" / name)
    shutil.copy(straight / "config.yaml", resumed / "config.yaml")


def csv_to_tars(table: str, root, parts: Sequence[slice], sample, last_extra: Sequence[dict] = ()) -> list[dict]:
    """Write the rows of CSV ``table`` as WebDataset shards ``root/train-{k}.tar``, one per slice of ``parts``: row
    ``r`` as ``{"__key__": "{k}_{i}", **sample(read, r)}`` where ``read(rel)`` gives the bytes of a media path relative
    to the table; ``last_extra`` samples are appended to the last shard. Returns the rows."""
    import csv
    import os

    import webdataset as wds

    with open(table) as f:
        rows = list(csv.DictReader(f))
    base = os.path.dirname(table)

    def read(rel: str) -> bytes:
        with open(os.path.join(base, rel), "rb") as media:
            return media.read()

    for k, part in enumerate(parts):
        with wds.TarWriter(str(root / f"train-{k}.tar")) as sink:
            for i, r in enumerate(rows[part]):
                sink.write({"__key__": f"{k}_{i}", **sample(read, r)})
            for extra in last_extra if k == len(parts) - 1 else ():
                sink.write(extra)
    return rows


def jpegs_good_and_bad(side: int = 32) -> tuple[bytes, bytes]:
    """(a noise JPEG, the same with its first Huffman table's 16 code-length counts made impossible): the bad one's
    header reads (PIL opens it, the device path's worker-side check passes it), but no decoder can decode it."""
    import io

    import numpy as np
    from PIL import Image

    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    bad = bytearray(jpeg.getvalue())
    dht = bad.index(b"\xff\xc4")
    bad[dht + 5: dht + 21] = b"\xff" * 16
    return jpeg.getvalue(), bytes(bad)


def same_weights(a, b, step: int) -> bool:
    """Whether runs ``a`` and ``b`` hold bitwise-identical weights at ``step``."""
    from safetensors.torch import load_file

    wa, wb = (load_file(str(r / "checkpoints" / f"step_{step:08d}" / "model.safetensors")) for r in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def fake_rates(monkeypatch, worker_rate: float, step_rate: float, cpus: int = 8) -> None:
    """``train.num_workers=auto``'s probe runs for real (reads, collates, forward + backward) but reports these
    rates (samples/s of one worker, of the step), on ``cpus`` CPUs."""
    from mm_ptft.train import loader_rate as LR

    real_data = LR.time_data
    monkeypatch.setattr(LR, "time_data", lambda *a, **k: (worker_rate, real_data(*a, **k)[1]))
    monkeypatch.setattr(LR, "time_step", lambda step, device, passes=2: (step(), step_rate)[1])
    monkeypatch.setattr("mm_ptft.train.trainer.cpu_count", lambda: cpus)


def crash_at_step(monkeypatch, step: int, run) -> None:
    """Call ``run()`` with the trainer interrupted right after optimizer step ``step`` (the kill a resume recovers
    from); the trainer is whole again afterwards."""
    from mm_ptft.train.trainer import Trainer

    real_step = Trainer._optimizer_step

    def crashing(self):
        norm = real_step(self)
        if self.step == step:
            raise KeyboardInterrupt
        return norm

    monkeypatch.setattr(Trainer, "_optimizer_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(Trainer, "_optimizer_step", real_step)
