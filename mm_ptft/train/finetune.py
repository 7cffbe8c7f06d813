"""Fine-tuning strategies (full, linear probe, layer freezing, layer-wise LR decay, LoRA), regularisation toward
the starting weights (``finetune.regularize``: L2-SP, EWC), gradient checkpointing, their parameter groups, and
saving the adapted encoders as reloadable directories.

The run path applies these once to a prepared task and hands the trainer the parameter groups; the
trainer never looks inside the model. Encoders are reached through the ``Task.encoders()`` contract."""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from torch import nn

from mm_ptft.config import ConfigError, FinetuneConfig, OptimConfig, RunConfig
from mm_ptft.registry import Registry
from mm_ptft.train.optim import GroupBuilder, decay_groups
from mm_ptft.train.regularize import LoadPrevious, attach as attach_regularizer

STRATEGIES: Registry[None] = Registry("finetune_strategy")


def _encoder_prefixes(task: nn.Module) -> dict[str, Any]:
    """``"<module path>."`` → encoder, for the encoders the task declares (not EMA or teacher copies)."""
    wanted = {id(e) for e in task.encoders().values()} if hasattr(task, "encoders") else set()
    return {name + "." if name else "": m for name, m in task.named_modules() if id(m) in wanted}


@STRATEGIES.register()
def full(task: nn.Module, cfg: FinetuneConfig) -> None:
    """Train every parameter."""


@STRATEGIES.register()
def llrd(task: nn.Module, cfg: FinetuneConfig) -> None:
    """Train every parameter; ``finetune_groups`` scales the LR by depth."""


@STRATEGIES.register()
def linear_probe(task: nn.Module, cfg: FinetuneConfig) -> None:
    """Freeze the encoders; train what sits on top of them."""
    for enc in _encoder_prefixes(task).values():
        enc.requires_grad_(False)


@STRATEGIES.register()
def freeze_layers(task: nn.Module, cfg: FinetuneConfig) -> None:
    """Freeze the embeddings and the first ``finetune.freeze_layers`` blocks of every encoder."""
    for enc in _encoder_prefixes(task).values():
        for name, p in enc.named_parameters():
            idx = enc.layer_of(name)
            if idx is not None and idx < cfg.freeze_layers:
                p.requires_grad_(False)


@STRATEGIES.register()
def freeze_encoder(task: nn.Module, cfg: FinetuneConfig) -> None:
    """Freeze the encoder half of every encoder-decoder model (its ``freeze_encoder()``, e.g. Whisper's audio
    encoder); the decoder trains."""
    found = [enc for enc in _encoder_prefixes(task).values() if hasattr(enc, "freeze_encoder")]
    if not found:
        raise ConfigError(f"finetune.strategy=freeze_encoder: {type(task).__name__} has no encoder-decoder model "
                          f"(nothing with freeze_encoder()); use linear_probe to freeze its encoders")
    for enc in found:
        enc.freeze_encoder()


@STRATEGIES.register()
def lora(task: nn.Module, cfg: FinetuneConfig) -> None:
    """Inject LoRA adapters (peft) into every encoder; only adapters (and non-encoder parts) train."""
    from peft import LoraConfig, inject_adapter_in_model

    for enc in _encoder_prefixes(task).values():
        targets = list(cfg.lora_targets) or enc.lora_targets()
        adapter = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=targets)
        inject_adapter_in_model(adapter, enc)
        for name, p in enc.named_parameters():
            p.requires_grad_("lora_" in name)


def apply_finetune(task: nn.Module, cfg: FinetuneConfig) -> None:
    """Freeze or adapt the task's encoders in place according to ``finetune.strategy``."""
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"finetune.strategy={cfg.strategy!r}; choose one of {STRATEGIES.names()}")
    STRATEGIES.get(cfg.strategy)(task, cfg)


def set_grad_checkpointing(task: nn.Module, enabled: bool = True) -> None:
    """Recompute every encoder's blocks in backward (memory for compute)."""
    for enc in task.encoders().values():
        enc.set_grad_checkpointing(enabled)


def _llrd_scale(task: nn.Module, decay: float) -> Callable[[str], float]:
    """Parameter name → LR scale: ``decay ** (depth from the top)`` inside encoders (embeddings deepest), else 1."""
    prefixes = {k: (e, e.num_layers) for k, e in _encoder_prefixes(task).items()}

    def scale(name: str) -> float:
        for prefix, (enc, n) in prefixes.items():
            if name.startswith(prefix):
                idx = enc.layer_of(name[len(prefix):])
                layer = n + 1 if idx is None else max(idx + 1, 0)  # embeddings 0, block i → i+1, the rest n+1
                return decay ** (n + 1 - layer)
        return 1.0

    return scale


def finetune_groups(task: nn.Module, optim: OptimConfig, ft: FinetuneConfig) -> list[dict[str, Any]]:
    """Trainable parameters grouped by (weight decay, LR scale); LLRD scales encoder layers by depth."""
    scale = _llrd_scale(task, ft.llrd_decay) if ft.strategy == "llrd" else None
    return decay_groups(task, optim, scale)


def prepare_for_training(task: nn.Module, cfg: RunConfig, load_previous: Optional[LoadPrevious] = None) -> GroupBuilder:
    """Apply ``cfg.finetune`` (strategy, then ``finetune.regularize`` toward the weights it starts from, an
    earlier run's read by ``load_previous``) and gradient checkpointing once; return the trainer's param-group
    builder (called on the task after distributed wrapping, which may replace parameters)."""
    apply_finetune(task, cfg.finetune)
    attach_regularizer(task, cfg.finetune.regularize, load_previous, cfg.train.distributed)
    if cfg.train.grad_checkpointing:
        set_grad_checkpointing(task)
    return lambda model: finetune_groups(model, cfg.optim, cfg.finetune)


def merged_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with LoRA adapters merged into the base weights and removed."""
    from peft.tuners.lora import LoraLayer

    module = copy.deepcopy(module)
    for name, m in list(module.named_modules()):
        if isinstance(m, LoraLayer):
            m.merge()
            parent_name, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, attr, m.get_base_layer())
    return module


def has_lora(module: nn.Module) -> bool:
    """Whether ``module`` holds LoRA adapters; without importing peft (seconds) when nothing has (adapters come
    from peft, so peft is loaded wherever one exists)."""
    if "peft" not in sys.modules:
        return False
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in module.modules())


def save_encoders(task: nn.Module, root: Path) -> None:
    """Write each encoder as a reloadable directory (LoRA adapters merged into the weights; no copy without)."""
    encoders = task.encoders() if hasattr(task, "encoders") else {}
    for modality, enc in encoders.items():
        (merged_copy(enc) if has_lora(enc) else enc).save_pretrained(Path(root) / modality)


__all__ = ["STRATEGIES", "apply_finetune", "finetune_groups", "merged_copy", "prepare_for_training", "save_encoders",
           "set_grad_checkpointing"]
