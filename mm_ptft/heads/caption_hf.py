"""A captioning run as a transformers ``VisionEncoderDecoderModel`` (``mm-ptft export --format hf``).

What it can express: an image captioner whose image encoder is a transformers vision model with a token sequence
(``model.image: {name: hf}``, ViT-like: ``last_hidden_state`` (B, N, D)) and whose decoder is a transformers causal
LM with cross-attention (``decoder: {name: hf}``). The run's memory projection (encoder width → decoder width)
becomes the model's ``enc_to_dec_proj`` where the widths differ; where they are equal transformers adds no
projection, so it is folded into the decoder's cross-attention key/value weights (GPT-2's ``c_attn``, BERT-style
``key``/``value``). The generation config is the run's greedy decoding (start = the caption tokenizer's BOS/[CLS],
end = EOS/[SEP], ``max_new_tokens``). Anything else — timm/torchvision/open_clip/built-in image encoders, the
built-in ``tiny`` decoder, audio captioners — is refused with the reason and ``--format mm_ptft`` to use instead.
"""
from __future__ import annotations

import copy
import tempfile
from typing import Any, Mapping

import torch
from torch import nn

from mm_ptft.encoders.image import HFImageEncoder
from mm_ptft.objectives import EncodedBatch
from mm_ptft.objectives.captioning import CaptioningObjective, HFCaptionDecoder
from mm_ptft.types import IMAGE

INSTEAD = "export --format mm_ptft instead (mm_ptft.from_pretrained loads any run)"


def image_captioner(task: Any) -> CaptioningObjective:
    """The run's one image captioner whose parts transformers can hold; NotImplementedError naming why not."""
    caps = dict(getattr(task, "captioners", {}))
    if not caps:
        raise NotImplementedError("the run has no captioning objective; a contrastive run exports with --format "
                                  "open_clip or sentence_transformers")
    if "image" not in caps:
        raise NotImplementedError(f"the run captions {sorted(caps)}: transformers' VisionEncoderDecoderModel "
                                  f"captions images only; {INSTEAD}")
    cap = caps["image"]
    enc = task.towers["image"]
    if not isinstance(enc, HFImageEncoder):
        raise NotImplementedError(f"model.image is a {type(enc).__name__}: VisionEncoderDecoderModel's encoder must "
                                  f"be a transformers vision model (model.image: {{name: hf, ...}}); timm, "
                                  f"torchvision, open_clip and built-in encoders are not; {INSTEAD}")
    if getattr(enc.model.config, "hidden_size", None) is None:
        raise NotImplementedError(f"model.image is a {type(enc.model).__name__}, a CNN whose output is a feature map, "
                                  f"not the token sequence VisionEncoderDecoderModel hands its decoder; {INSTEAD}")
    if not isinstance(cap.decoder, HFCaptionDecoder):
        raise NotImplementedError(f"{cap.where}.decoder is the built-in {type(cap.decoder).__name__}, which no "
                                  f"transformers class holds: train with decoder {{name: hf, ...}} (a causal LM with "
                                  f"cross-attention, e.g. gpt2) to export --format hf; or {INSTEAD}")
    return cap


def fold_memory_projection(decoder: nn.Module, proj: nn.Linear) -> int:
    """Fold ``proj`` (memory = x Pᵀ + p) into every cross-attention key/value map of ``decoder``; returns how many
    maps took it (0: an architecture whose cross-attention this does not know)."""
    p = proj.bias if proj.bias is not None else torch.zeros(proj.out_features)
    found = 0
    with torch.no_grad():
        for name, m in decoder.named_modules():
            if name.endswith("crossattention.c_attn"):  # GPT-2 Conv1D: y = x W + b, W (in, out)
                m.bias.copy_(p @ m.weight + m.bias)
                m.weight.copy_(proj.weight.T @ m.weight)
                found += 1
            elif name.endswith(("crossattention.self.key", "crossattention.self.value")):  # nn.Linear: y = x Kᵀ + b
                m.bias.copy_(m.weight @ p + m.bias)
                m.weight.copy_(m.weight @ proj.weight)
                found += 1
    return found


def vision_encoder_decoder(task: Any) -> nn.Module:
    """The ``VisionEncoderDecoderModel`` computing the run's image captions, its generation config the run's greedy
    decoding."""
    from transformers import VisionEncoderDecoderModel

    cap = image_captioner(task)
    encoder = copy.deepcopy(task.towers["image"].model)
    decoder = copy.deepcopy(cap.decoder.model)
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    if hasattr(model, "enc_to_dec_proj"):
        model.enc_to_dec_proj.load_state_dict(cap.memory_proj.state_dict())
    elif not fold_memory_projection(model.decoder, cap.memory_proj):
        raise NotImplementedError(f"the image encoder and {type(decoder).__name__} have the same width, so "
                                  f"VisionEncoderDecoderModel adds no encoder→decoder projection, and the run's "
                                  f"memory projection cannot be folded into this decoder's cross-attention; {INSTEAD}")
    pad = cap.tokenizer.pad_token_id if cap.tokenizer.pad_token_id is not None else cap.eos
    model.decoder.config.bos_token_id, model.decoder.config.eos_token_id = cap.bos, cap.eos  # gpt2's 50256: not ours
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id, cfg.eos_token_id, cfg.pad_token_id = cap.bos, cap.eos, pad
    gen = model.generation_config
    gen.bos_token_id, gen.max_new_tokens, gen.do_sample, gen.num_beams = cap.bos, cap.max_new_tokens, False, 1
    gen.max_length = None
    return model.eval()


def save_caption_files(task: Any, path: Any, max_length: int | None = None) -> None:
    """Beside the model: an image processor doing what the paired recipes' data path does to an image (shorter edge
    resized to the encoder's size S with its resampling, centre crop S × S, its mean/std: ``paired_ops``) — not the
    encoder's own processor, which may squash or crop otherwise — and the caption tokenizer (``model_max_length``:
    the run's caption limit)."""
    from mm_ptft.encoders.image import Preprocess, save_eval_processor

    cap = image_captioner(task)
    pre = task.towers["image"].preprocess
    save_eval_processor(Preprocess.make(pre.size[0], pre.mean, pre.std, pre.interpolation, crop_pct=1.0), path)
    tok = copy.copy(cap.tokenizer)
    if max_length:
        tok.model_max_length = int(max_length)
    tok.save_pretrained(str(path))


def until_eos(ids: torch.Tensor, eos: int) -> list[list[int]]:
    """Each row of generated ids (B, T) up to and including its first EOS (what the caption is made of)."""
    rows = []
    for row in ids.tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


@torch.no_grad()
def caption_parity(task: Any, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
    """Greedy captions of the exported model, round-tripped through ``save_pretrained``/``from_pretrained`` (its
    generation config included), against the run's own on the batch's images: the same tokens up to EOS?"""
    cap = image_captioner(task)
    memory, mask = cap.memory(EncodedBatch(task.towers, batch))
    ours = until_eos(cap.decoder.generate(memory, mask, cap.bos, cap.eos, cap.max_new_tokens), cap.eos)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        reloaded = type(model).from_pretrained(tmp).eval()
    theirs = until_eos(reloaded.generate(pixel_values=batch[IMAGE])[:, 1:], cap.eos)  # the start token dropped
    same = ours == theirs
    out = {"samples": len(ours), "same_generated_tokens": same, "ok": same}
    if not same:
        i = next(k for k, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b)
        out["mismatch"] = (f"generates otherwise than the run (greedy) on evaluation image {i}: {theirs[i]} vs the "
                           f"run's {ours[i]}")
    return out


__all__ = ["caption_parity", "fold_memory_projection", "image_captioner", "save_caption_files", "until_eos", "vision_encoder_decoder"]
