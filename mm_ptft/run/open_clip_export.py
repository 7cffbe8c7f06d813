"""``mm-ptft export RUN --format open_clip``: a CLIP run whose image and text towers are one open_clip model's,
written as a directory that open_clip itself loads (``open_clip.create_model_and_transforms("local-dir:DIR")``,
``open_clip.get_tokenizer("local-dir:DIR")``): ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and
``open_clip_model.safetensors``.

The run's contrastive projection (a linear map on top of each tower's own projection) is folded into the tower's
projection — ``visual.proj`` / ``text_projection`` as a matrix (``x @ P``) or a ``Linear`` — so ``embed_dim``
becomes the objective's; the pair's temperature becomes ``logit_scale`` (and SigLIP's bias ``logit_bias``). Before
anything is written, the loaded model's normalised embeddings and logits are compared with the run's on
evaluation samples."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mm_ptft.contracts import ExportError, parity_batch

PARITY_TOL = 1e-5  # max |Δ| of the L2-normalised embeddings between open_clip's model and the run's
WEIGHTS = "open_clip_model.safetensors"
CONFIG = "open_clip_config.json"


def _tower_specs(cfg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    image, text = (dict(getattr(cfg.model, m) or {}) for m in ("image", "text"))
    if image.get("name") != "open_clip" or text.get("name") != "open_clip":
        raise ExportError(f"--format open_clip: model.image.name={image.get('name')!r}, model.text.name="
                          f"{text.get('name')!r}; both towers must be open_clip's (export --format mm_ptft)")
    same = ("name_or_path", "model_cfg")
    if any(image.get(k) != text.get(k) for k in same):
        raise ExportError(f"--format open_clip: model.image and model.text name different open_clip models "
                          f"({[image.get(k) for k in same]} vs {[text.get(k) for k in same]}); one CLIP has one")
    return image, text


def _full_model_cfg(image: dict[str, Any]) -> dict[str, Any]:
    """The model's whole config as open_clip builds it: the named config, ``model_cfg``'s top-level overrides,
    and the forced image size (``create_model``'s order)."""
    import open_clip

    name = str(image.get("name_or_path") or "ViT-B-32")
    base = open_clip.get_model_config(name) if not name.startswith(("hf-hub:", "local-dir:")) else None
    if base is None:
        raise ExportError(f"--format open_clip: model.image.name_or_path={name!r} is not one of open_clip's named "
                          f"configs; the run's model config cannot be written")
    full = copy.deepcopy(base)
    full.update(copy.deepcopy(dict(image.get("model_cfg") or {})))
    if image.get("image_size"):
        full["vision_cfg"] = {**full["vision_cfg"], "image_size": int(image["image_size"])}
    return full


def fold(projection: Any, w: torch.Tensor) -> Any:
    """``projection`` followed by ``x ↦ x @ w.T`` as one projection of the same kind: a ``(width, E)`` matrix
    applied as ``x @ P`` → ``P @ w.T``; a ``Linear`` → ``Linear(w @ W, w @ b)``."""
    if isinstance(projection, nn.Linear):
        lin = nn.Linear(projection.in_features, w.shape[0], bias=projection.bias is not None)
        lin.weight.data = w @ projection.weight.data  # (E', width)
        if projection.bias is not None:
            lin.bias.data = w @ projection.bias.data  # (E',)
        return lin
    if isinstance(projection, torch.Tensor) and projection.dim() == 2:
        return nn.Parameter(projection.data @ w.T)  # (width, E')
    raise ExportError(f"--format open_clip: cannot fold the run's projection into a {type(projection).__name__}")


def _final_projection(owner: nn.Module, names: tuple[str, ...]) -> tuple[nn.Module, str]:
    for dotted in names:
        *path, leaf = dotted.split(".")
        mod = owner
        for p in path:
            mod = getattr(mod, p, None)
        if mod is not None and getattr(mod, leaf, None) is not None:
            return mod, leaf
    raise ExportError(f"--format open_clip: {type(owner).__name__} has none of the projections {list(names)}")


def open_clip_model(task: nn.Module, cfg: Any) -> tuple[nn.Module, dict[str, Any]]:
    """The open_clip model the run's image–text CLIP computes, and its ``model_cfg``."""
    import open_clip

    image, _ = _tower_specs(cfg)
    obj = getattr(task, "retrieval", None)
    if obj is None or ("image", "text") not in [tuple(p) for p in obj.pairs]:
        raise ExportError("--format open_clip: the run has no image–text contrastive objective (model.objective)")
    if not all(isinstance(obj.proj[m].net, nn.Linear) for m in ("image", "text")):
        raise ExportError("--format open_clip: model.objective.proj_hidden > 0 (an MLP projection) has no place in "
                          "open_clip's towers; train with proj_hidden: 0")
    model_cfg = _full_model_cfg(image)
    model_cfg["embed_dim"] = int(obj.embed_dim)
    loss = obj.losses["image_text"]
    if loss.bias is not None:
        model_cfg["init_logit_bias"] = float(loss.bias.detach())
    with torch.no_grad():
        visual = copy.deepcopy(task.towers["image"].visual)
        holder, leaf = _final_projection(visual, ("proj", "head.proj", "attnpool.c_proj"))
        setattr(holder, leaf, fold(getattr(holder, leaf), obj.proj["image"].net.weight))
        text = copy.deepcopy(task.towers["text"].model)
        holder, leaf = _final_projection(text, ("text_projection", "text.proj"))
        setattr(holder, leaf, fold(getattr(holder, leaf), obj.proj["text"].net.weight))
        model = open_clip.create_model(str(image.get("name_or_path")), pretrained=None, **model_cfg)
        state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
        state.update({k: v for k, v in text.state_dict().items() if not k.startswith("visual.")})
        state["logit_scale"] = loss.log_scale.detach().clamp(max=math.log(loss.max_scale))
        if loss.bias is not None:
            state["logit_bias"] = loss.bias.detach().clone()
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ExportError(f"--format open_clip: the run's towers do not fill open_clip's model (missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]})")
    return model.eval(), model_cfg


@torch.no_grad()
def clip_parity(task: nn.Module, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    """Max |Δ| between the run's and open_clip's normalised embeddings and image→text logits on one batch."""
    from mm_ptft.objectives import MODALITY_KEYS, EncodedBatch

    feats = EncodedBatch(task.towers, batch)
    obj = task.retrieval
    ours = {m: obj.embed(feats, m) for m in ("image", "text")}  # (B, E) each
    ids = batch[MODALITY_KEYS["text"]]  # (B, L)
    ids = nn.functional.pad(ids, (0, task.towers["text"].max_length - ids.shape[1]))  # (B, context)
    theirs = {"image": model.encode_image(batch[MODALITY_KEYS["image"]], normalize=True).float(),  # (B, E)
              "text": model.encode_text(ids, normalize=True).float()}  # (B, E)
    scale = obj.losses["image_text"].scale
    logits = (scale * ours["image"] @ ours["text"].T, model.logit_scale.exp() * theirs["image"] @ theirs["text"].T)
    return {"samples": int(ids.shape[0]),
            "max_abs_diff_embedding": max(float((ours[m] - theirs[m]).abs().max()) for m in ours),
            "max_abs_diff_logit": float((logits[0] - logits[1]).abs().max())}


def preprocess_cfg(model: nn.Module, task: nn.Module) -> dict[str, Any]:
    pre = task.towers["image"].preprocess
    out = {"size": list(pre.size), "mean": list(pre.mean), "std": list(pre.std)}
    interp = getattr(pre, "interpolation", None)
    if interp:
        out["interpolation"] = str(interp)
    resize_mode = (getattr(model.visual, "preprocess_cfg", {}) or {}).get("resize_mode")
    if resize_mode:
        out["resize_mode"] = resize_mode
    return out


def write_open_clip(task: nn.Module, cfg: Any, prepared: Any, out: Path) -> dict[str, Any]:
    """Check open_clip's model against the run on evaluation samples, then write ``out`` for ``local-dir:``."""
    import safetensors.torch

    model, model_cfg = open_clip_model(task, cfg)
    batch = parity_batch(prepared, "open_clip")
    check = clip_parity(task, model, batch)
    if check["max_abs_diff_embedding"] > PARITY_TOL:
        raise ExportError(f"--format open_clip: open_clip's model embeds otherwise than the run (max |Δ| "
                          f"{check['max_abs_diff_embedding']:.2e} on {check['samples']} samples); nothing written")
    out.mkdir(parents=True, exist_ok=True)  # only after the check: a refused model writes nothing
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / WEIGHTS)
    (out / CONFIG).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg(model, task)},
                                         indent=2))
    return {"class": type(model).__name__, "embed_dim": model_cfg["embed_dim"], "parity": check,
            "load_with": f'open_clip.create_model_and_transforms("local-dir:{out.name}")'}
