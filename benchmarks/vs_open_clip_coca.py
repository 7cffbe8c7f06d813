"""CoCa (contrastive + captioning) training step time: mm_ptft (``clip`` + ``captioning`` objectives through its
Trainer) vs open_clip's CoCa model and ``CoCaLoss`` in open_clip's own ``train_one_epoch``, same towers' sizes,
batch, image size, caption lengths, loss weights (contrastive 1, caption 2), AdamW, clipping at 1.0, fp32, seeds
interleaved. Runs on the CPU (tiny sizes, as the suite's tiny configs) or CUDA.

    python benchmarks/vs_open_clip_coca.py [--quick] [--seeds 3] [--device cpu]

open_clip's side: ``open_clip.create_model`` of a tiny CoCa config registered here (ViT 2 layers of width 64,
patch 8 on 32x32 images, text 2 layers of 64, multimodal decoder 2 layers of 64; ``pretrained=None``). mm_ptft's
side: a timm ViT of the same shape, the tiny text encoder (2 layers of 64), the tiny caption decoder (2 layers of
64). The towers are alike in size, not in every detail (open_clip's attentional pooler and its text tower's causal
mask; mm_ptft's separate caption embedding table): the parameter counts of both are in the notes. Both timed by
``benchmarks.common.StepClock`` over the same window (w, N].
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (ClockCallback, StepClock, paired_rows, script_main, section,  # noqa: E402
                               throughput_rows, window_rule)
from benchmarks.vs_open_clip import open_clip_train_setup, ours_config  # noqa: E402

WIDTH, LAYERS, IMAGE, VOCAB, CONTEXT = 64, 2, 32, 1000, 24
COCA_TINY = {"embed_dim": WIDTH, "custom_text": True,
             "vision_cfg": {"image_size": IMAGE, "layers": LAYERS, "width": WIDTH, "patch_size": 8, "head_width": 32,
                            "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
             "text_cfg": {"context_length": CONTEXT, "vocab_size": VOCAB, "width": WIDTH, "heads": 2,
                          "layers": LAYERS, "embed_cls": True, "output_tokens": True},
             "multimodal_cfg": {"context_length": CONTEXT, "vocab_size": VOCAB, "width": WIDTH, "heads": 2,
                                "layers": LAYERS, "attn_pooler_heads": 2}}


class Captions(Dataset):
    """Random images (3, 32, 32) and captions of 8-16 words from a 900-word vocabulary, fixed by seed."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, IMAGE, IMAGE, generator=g)
        lens = torch.randint(8, 17, (n,), generator=g)
        self.words = [torch.randint(0, 900, (int(k),), generator=g).tolist() for k in lens]

    def __len__(self) -> int:
        return len(self.images)

    def text(self, i: int) -> str:
        return " ".join(f"w{w}" for w in self.words[i])


class OursItems(Dataset):
    def __init__(self, data: Captions, tok: Any) -> None:
        self.data, self.ids = data, [tok(data.text(i))["input_ids"] for i in range(len(data))]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.data.images[i], "text": self.ids[i]}


def build_ours(data: Captions):
    from mm_ptft.encoders import TEXT_ENCODERS, build_encoder
    from mm_ptft.encoders.image import IMAGE_ENCODERS
    from mm_ptft.heads.pretraining import PretrainTask
    from mm_ptft.objectives import OBJECTIVES
    import mm_ptft.objectives.captioning  # noqa: F401  (registers captioning)
    import mm_ptft.objectives.contrastive  # noqa: F401

    torch.manual_seed(0)
    corpus = [data.text(i) for i in range(len(data))]
    towers = {"image": build_encoder(IMAGE_ENCODERS, {
        "name": "timm", "name_or_path": "vit_tiny_patch16_224", "img_size": IMAGE,
        "model_kwargs": {"patch_size": 8, "embed_dim": WIDTH, "depth": LAYERS, "num_heads": 2}}, "model.image"),
        "text": build_encoder(TEXT_ENCODERS, {"name": "tiny", "dim": WIDTH, "depth": LAYERS, "heads": 2,
                                              "max_length": CONTEXT, "vocab_size": VOCAB}, "model.text", corpus=corpus)}
    objectives = {"clip": OBJECTIVES.build({"name": "clip", "embed_dim": WIDTH}, "clip", encoders=towers),
                  "caption": OBJECTIVES.build({"name": "captioning", "decoder": {
                      "name": "tiny", "dim": WIDTH, "depth": LAYERS, "heads": 2, "max_length": CONTEXT}},
                      "caption", encoders=towers)}
    return PretrainTask(towers, objectives, {"clip": 1.0, "caption": 2.0})


def run_ours(args: Any, data: Captions, clock: StepClock, params: dict) -> None:
    from mm_ptft.data.multimodal import MultimodalCollator
    from mm_ptft.train.trainer import Trainer

    clock.begin()
    task = build_ours(data)
    params["mm_ptft Trainer"] = sum(p.numel() for p in task.parameters())
    items = OursItems(data, task.towers["text"].tokenizer)
    clock.count_forward(task)
    with tempfile.TemporaryDirectory() as out:
        cfg = ours_config(args, out)
        Trainer(task, cfg, items, None, MultimodalCollator(0), callbacks=[ClockCallback(clock)]).fit()
        clock.end()


def run_open_clip(args: Any, data: Captions, clock: StepClock, params: dict) -> None:
    import open_clip
    from open_clip.factory import _MODEL_CONFIGS
    from open_clip_train.train import train_one_epoch

    clock.begin()
    _MODEL_CONFIGS["coca_bench_tiny"] = COCA_TINY
    torch.manual_seed(0)
    model = open_clip.create_model("coca_bench_tiny", pretrained=None, output_dict=True).to(args.device)
    params["open_clip train_one_epoch"] = sum(p.numel() for p in model.parameters())
    sot, eot = VOCAB - 2, VOCAB - 1  # their tokenizer's start/end ids; words are ids 1..900, 0 = padding

    def collate(items):
        texts = torch.zeros(len(items), CONTEXT, dtype=torch.long)
        for k, i in enumerate(items):
            ids = [sot, *(w + 1 for w in data.words[i]), eot][:CONTEXT]
            texts[k, : len(ids)] = torch.tensor(ids)
        return data.images[list(items)], texts

    loader = DataLoader(range(len(data)), batch_size=args.batch, shuffle=True, drop_last=True, collate_fn=collate,
                        num_workers=args.workers)
    loader.num_batches, loader.num_samples = args.steps, args.steps * args.batch
    info = argparse.Namespace(dataloader=loader, set_epoch=lambda epoch: None)
    opt, scaler, oargs = open_clip_train_setup(model, args)
    step = opt.step

    def stamped_step(*a: Any, **kw: Any) -> Any:
        out = step(*a, **kw)
        clock.stamp(args.batch)
        return out

    opt.step = stamped_step
    loss = open_clip.CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0, pad_id=0)
    train_one_epoch(model, {"train": info}, loss, 0, opt, scaler, None, None, oargs)
    clock.end()


SIZES = {"quick": {"steps": 12, "warmup": 4}, "full": {"steps": 40, "warmup": 10}}
ARMS = {"open_clip train_one_epoch": run_open_clip, "mm_ptft Trainer": run_ours}


def compare(quick: bool = False, seeds: int = 3, device: str = "") -> dict[str, Any]:
    title = "issue-26 captioning: CoCa step time vs open_clip (tiny CoCa, batch 32, fp32)"
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    args = argparse.Namespace(batch=32, precision="fp32", workers=0, device=device, **SIZES["quick" if quick else "full"])
    data = Captions(args.steps * args.batch)
    t: dict[str, list[dict[str, float]]] = {name: [] for name in ARMS}
    params: dict[str, int] = {}
    for seed in range(seeds):
        for name in (list(ARMS) if seed % 2 == 0 else list(ARMS)[::-1]):
            clock = StepClock(args.warmup, args.steps, args.device)
            ARMS[name](args, data, clock, params)
            t[name].append(clock.timing())
    rows = throughput_rows(t) + paired_rows(t["mm_ptft Trainer"], t["open_clip train_one_epoch"],
                                            "mm_ptft vs open_clip", ("samples_per_s",))
    return section(title, window_rule(args.warmup, args.steps), ["arm", "samples/s", "start-up s", "after s", "wall s"],
                   rows, seeds=seeds, quick=quick, raw=t,
                   notes=[f"device {device}; parameters: " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in params.items()),
                          "comparable in shape, not identical (module docstring): open_clip pads every caption to its "
                          f"context length {CONTEXT}, mm_ptft to the longest in the batch (≤ 18 tokens here); "
                          "both load in-process (num_workers=0)"])


def main() -> None:
    script_main(compare, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()
