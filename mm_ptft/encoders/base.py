"""The Encoder contract and the encoder-directory format shared by every modality.

An encoder directory holds ``mm_ptft_encoder.json`` (registry name + kwargs) and the weights:
HF-backed encoders write ``save_pretrained`` files, the rest a ``model.safetensors``. Any recipe
rebuilds it from ``model.<modality>.name_or_path=<dir>``.
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import torch
from torch import nn

from mm_ptft.config import ConfigError
from mm_ptft.registry import Registry, RegistryError, untrusted, untrusted_source  # noqa: F401  (re-exported)
from mm_ptft.types import INPUT_KEYS, EncoderOutput

ENCODER_FILE = "mm_ptft_encoder.json"
#: builder options that only say where initial weights come from, and their "no weights" values
WEIGHT_SOURCE_KEYS = {"pretrained": None, "weights": None, "checkpoint_path": ""}
_LAYER_RE = re.compile(r"(?:^|\.)(?:layer|layers|blocks|block|h|stages|resblocks)\.(\d+)\.")
_STAGE_RE = re.compile(r"(?:^|\.)layer(\d+)\.")  # ResNet-style 1-based stages (timm, torchvision): layer1 → 0
_EMBED_RE = re.compile(r"embed|cls_token|pos_|position|patch|stem|conv1\.|bn1\.|feature_extractor|mask_emb")


class Encoder(nn.Module):
    """Base for all encoders: ``forward(batch) -> EncoderOutput``; reads its own batch keys."""

    modality: str = ""
    out_dim: int = 0
    #: set by the encoder registries' ``build`` (and ``build_encoder``): the spec that rebuilds this encoder
    spec: dict[str, Any]
    #: True where ``save_pretrained`` writes a Hugging Face directory
    hf_format: bool = False

    def forward(self, batch: Mapping[str, Any]) -> EncoderOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        """Depth used by layer-wise LR decay and layer freezing."""
        ids = [layer_index(n) for n, _ in self.named_parameters()]
        return max([i for i in ids if i is not None], default=-1) + 1

    def layer_of(self, param_name: str) -> Optional[int]:
        """Block index of one of this encoder's parameters (-1 embeddings, None neither): LLRD and freezing."""
        return layer_index(param_name)

    def input_keys(self) -> list[str]:
        """The batch keys this encoder reads, in the order an exported graph takes them."""
        return list(INPUT_KEYS[self.modality])

    def export_preprocessing(self, out: Path) -> dict[str, Any]:
        """What a server must do to raw inputs before an exported graph (files it needs are written beside ``out``)."""
        return {}

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not support gradient checkpointing")

    def lora_targets(self) -> list[str]:
        """Module-name suffixes that LoRA adapts by default (attention projections)."""
        names = {n.rsplit(".", 1)[-1] for n, m in self.named_modules() if isinstance(m, nn.Linear)}
        preferred = ["query", "value", "q_proj", "v_proj", "qkv", "in_proj", "q", "v", "out_proj"]
        found = [p for p in preferred if p in names]
        if not found:
            raise ValueError(f"{type(self).__name__}: no attention projections found for LoRA; "
                             f"set finetune.lora_targets to some of {sorted(names)}")
        return found

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write an encoder directory that ``build_encoder`` reloads by path."""
        from safetensors.torch import save_model

        if not isinstance(getattr(self, "spec", None), dict):
            raise ValueError(f"{type(self).__name__} was not built from a registry, so it cannot say how to rebuild "
                             f"itself: build it with mm_ptft.build_encoder(modality, name, **kwargs) or "
                             f"<MODALITY>_ENCODERS.build({{'name': ..., ...}})")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        kwargs = {k: v for k, v in self.spec.items() if k not in ("name", "name_or_path", "corpus")}
        if not self.hf_format and not is_encoder_dir(self.spec.get("name_or_path")):
            # For timm/torchvision/open_clip the name is the architecture: keep it; the weights now
            # live in this directory, so the options that fetched initial weights are switched off.
            if self.spec.get("name_or_path"):
                kwargs["name_or_path"] = self.spec["name_or_path"]
            kwargs.update({k: v for k, v in WEIGHT_SOURCE_KEYS.items() if k in kwargs})
        meta = {"name": self.spec["name"], "modality": self.modality, "kwargs": kwargs,
                "format": "hf" if self.hf_format else "safetensors"}
        if self.hf_format:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # one line per event, not a bar per file
            self.save_hf(path)
        else:
            save_model(self, str(path / "model.safetensors"))
        tok = getattr(self, "tokenizer", None)
        if tok is not None and not self.hf_format:
            tok.save_pretrained(str(path))
        (path / ENCODER_FILE).write_text(json.dumps(meta, indent=2))

    def save_hf(self, path: Path) -> None:  # pragma: no cover - overridden by HF encoders
        raise NotImplementedError

    def hf_with_head(self, kind: str, head: nn.Linear, config: Mapping[str, Any]) -> nn.Module:
        """A transformers model that is this encoder plus ``head`` (``mm-ptft export --format hf``); encoders
        that are not Hugging Face models have none."""
        raise NotImplementedError(f"{type(self).__name__} (name: {getattr(self, 'spec', {}).get('name', '?')}) is not "
                                  f"a Hugging Face model, so no transformers class loads it")


class HFBacked:
    """Mixin for encoders that wrap a transformers model in ``self.model``: gradient checkpointing,
    ``save_pretrained`` of the model plus its tokenizer or processor, where it has one, and the
    transformers ``*For<Task>`` model that equals this encoder plus a task's linear head."""

    hf_format = True
    #: head kind ("classification", "ctc") → the transformers auto class that puts that head on this model
    hf_heads: dict[str, str] = {}

    def hf_pooling_problem(self, kind: str) -> Optional[str]:
        """Why this encoder's pooled embedding is not what the transformers class feeds its head (None: it is)."""
        return None

    def hf_head_parts(self) -> dict[str, nn.Module]:
        """Modules of this encoder that the transformers ``*For<Task>`` class holds beside its base model and linear
        head, by its attribute name (VideoMAE's ``fc_norm``): ``hf_with_head`` copies them in."""
        return {}

    def hf_model_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """This encoder's batch keys under the names the transformers model takes."""
        raise NotImplementedError(f"{type(self).__name__}: no transformers input names")

    def hf_with_head(self, kind: str, head: nn.Linear, config: Mapping[str, Any]) -> nn.Module:
        """The transformers ``hf_heads[kind]`` model for this architecture with this encoder's weights and ``head``
        as its one linear layer (over the pooled embedding or each frame), ``config`` (the task's: labels,
        vocabulary size…) set on its config. NotImplementedError naming the reason where no such class exists,
        its head is more than one linear layer, or it pools otherwise than this encoder (the caller also
        compares outputs before writing anything)."""
        import transformers

        arch = type(self.model).__name__
        auto = self.hf_heads.get(kind)
        if auto is None:
            raise NotImplementedError(f"{type(self).__name__} ({arch}): transformers has no {kind} class for it here")
        problem = self.hf_pooling_problem(kind)
        if problem:
            raise NotImplementedError(problem)
        hf_config = copy.deepcopy(self.model.config)
        for key, value in config.items():
            setattr(hf_config, key, value)
        try:
            model = getattr(transformers, auto).from_config(hf_config)
        except ValueError as err:  # the auto class has no entry for this model_type
            raise NotImplementedError(f"{arch}: transformers' {auto} has no class for model_type "
                                      f"{hf_config.model_type!r}") from err
        base = getattr(model, model.base_model_prefix)
        linears = [(n, m) for n, m in model.named_children() if isinstance(m, nn.Linear)]
        parts = self.hf_head_parts()
        others = [n for n, m in model.named_children() if m is not base and not isinstance(m, nn.Linear)
                  and any(True for _ in m.parameters()) and n not in parts]
        if len(linears) != 1 or others or linears[0][1].weight.shape != head.weight.shape:
            raise NotImplementedError(f"{type(model).__name__}'s head is {[n for n, _ in linears] + others}, not one linear "
                                      f"layer {tuple(head.weight.shape)} over the pooled embedding as this task's")
        missing, _ = base.load_state_dict(self.model.state_dict(), strict=False)
        if missing:
            raise NotImplementedError(f"{type(model).__name__}: the encoder's weights lack {sorted(missing)[:5]}")
        linears[0][1].load_state_dict(head.state_dict())
        for name, part in parts.items():
            getattr(model, name).load_state_dict(part.state_dict())
        return model.eval()

    def hf_save_processing(self, path: Path, max_length: Optional[int] = None) -> None:
        """Save the tokenizer (its ``model_max_length`` set to what the run truncates to) or processor."""
        tok = getattr(self, "tokenizer", None)
        if tok is not None and hasattr(tok, "save_pretrained"):
            tok = copy.copy(tok)
            if max_length:
                tok.model_max_length = int(max_length)
            tok.save_pretrained(str(path))
        proc = getattr(self, "processor", None)
        if proc is not None and hasattr(proc, "save_pretrained"):
            proc.save_pretrained(str(path))

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        if enabled:
            self.model.gradient_checkpointing_enable()
        else:
            self.model.gradient_checkpointing_disable()

    def save_hf(self, path: Path) -> None:
        self.model.save_pretrained(str(path))
        for attr in ("tokenizer", "processor"):
            part = getattr(self, attr, None)
            if part is not None and hasattr(part, "save_pretrained"):
                part.save_pretrained(str(path))


_SHARED: contextvars.ContextVar[Mapping[str, "Encoder"]] = contextvars.ContextVar("shared_encoders", default={})


@contextlib.contextmanager
def shared_encoders(encoders: Mapping[str, "Encoder"]) -> Iterator[None]:
    """Inside this block ``build_encoder`` hands out these already-built encoders (modality → encoder) instead of
    building one: how the multitask recipe runs each single-task recipe's own ``prepare`` on shared encoders."""
    token = _SHARED.set(dict(encoders))
    try:
        yield
    finally:
        _SHARED.reset(token)


def remote_code(requested: bool, where: str, name_or_path: Optional[str]) -> bool:
    """The ``trust_remote_code`` an HF builder hands transformers: what its config asks for, except that
    inside ``untrusted_source`` a request is refused (a ``ConfigError`` naming the command-line flag)."""
    source = untrusted()
    if requested and source:
        raise ConfigError(f"{source}: {where}.trust_remote_code is true (model {name_or_path or '<config>'}); a run "
                          f"directory is data, not code, so its config cannot turn remote code on: pass "
                          f"--trust-remote-code to this command if you trust the code in that model directory")
    return bool(requested)


def layer_index(param_name: str) -> Optional[int]:
    """Block index of a parameter (``encoder.layer.3.…`` → 3, ResNet ``layer2.0.…`` → 1), -1 for embeddings
    (and a CNN's stem), None otherwise (heads, final norms)."""
    m = _LAYER_RE.search(param_name)
    if m:
        return int(m.group(1))
    m = _STAGE_RE.search(param_name)
    if m:  # checked before the embedding names: ``layer1.0.conv1`` is a block, not the stem's ``conv1``
        return int(m.group(1)) - 1
    if _EMBED_RE.search(param_name):
        return -1
    return None


def is_encoder_dir(path: Any) -> bool:
    return isinstance(path, str) and os.path.isfile(os.path.join(path, ENCODER_FILE))


class SpecError(ConfigError, RegistryError):
    """An encoder spec the registry refuses (unknown name or option): a ConfigError (the CLI's exit 2), still
    the registry's own error (a KeyError) for code that catches that."""


#: encoder options (also inside a nested ``config``) that are sizes: 0 or less is a ConfigError naming the key
POSITIVE_OPTIONS = frozenset({
    "sample_rate", "img_size", "image_size", "patch_size", "n_mels", "dim", "depth", "heads", "embed_dim", "out_dim",
    "widths", "vocab_size", "max_length", "max_frames", "subsample", "hidden_size", "num_hidden_layers",
    "num_attention_heads", "intermediate_size", "max_position_embeddings"})


def check_sizes(spec: Mapping[str, Any], where: str) -> None:
    """Size options of an encoder spec (``POSITIVE_OPTIONS``) must be positive numbers (each, for a list)."""
    for key, value in spec.items():
        if isinstance(value, Mapping):
            check_sizes(value, f"{where}.{key}")
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        bad = [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool) and not v > 0]
        if key in POSITIVE_OPTIONS and bad:
            raise ConfigError(f"bad value for config key '{where}.{key}': {value!r} is out of range (must be >0)")


def build_encoder(registry: Registry[Encoder], spec: Mapping[str, Any], where: str,
                  **runtime: Any) -> Encoder:
    """Build an encoder from ``{name, **kwargs}`` or reload one from an encoder directory (size options
    checked first: ``check_sizes``). The registry's refusals (unknown name, unknown option) are ConfigErrors.
    Inside ``shared_encoders`` the shared encoder of the registry's modality is returned as it is."""
    shared = _SHARED.get().get(registry.kind.split("_")[0])
    if shared is not None:
        return shared
    check_sizes(spec, where)
    try:
        return _build_encoder(registry, spec, where, **runtime)
    except KeyError as err:
        msg = str(err.args[0]) if err.args else ""
        if msg.startswith((where, "unknown ")):
            raise SpecError(msg) from None
        raise


def _build_encoder(registry: Registry[Encoder], spec: Mapping[str, Any], where: str, **runtime: Any) -> Encoder:
    spec = dict(spec)
    path = spec.get("name_or_path")
    if is_encoder_dir(path):
        meta = json.loads(Path(path, ENCODER_FILE).read_text())
        if meta.get("modality") not in (None, registry.kind.split("_")[0]):
            raise ValueError(f"{where}.name_or_path={path} holds a {meta['modality']} encoder, "
                             f"not a {registry.kind.split('_')[0]} one")
        # The directory defines the architecture: the recipe's own model.<modality> keys (often written
        # for another encoder) only fill options the saved builder takes and the directory leaves open.
        params = inspect.signature(registry.get(meta["name"], where)).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        # A directory is data, not code: its stored options never turn remote code on, only this spec does.
        saved = {k: v for k, v in meta["kwargs"].items() if k != "trust_remote_code"}
        fill = {k: v for k, v in spec.items() if (takes_any or k in params) and (k not in saved or k in RATE_KEYS)
                and k not in ("name", "name_or_path", "tokenizer")}
        stored = {**saved, **fill}
        if meta["format"] == "hf":
            enc = registry.build({"name": meta["name"], **stored, "name_or_path": path}, where, **runtime)
            enc.spec = {"name": meta["name"], **stored, "name_or_path": path}
            return enc
        stored.pop("tokenizer", None)
        tok = os.path.join(path, "tokenizer.json")
        extra = {"tokenizer": path} if os.path.isfile(tok) else {}
        enc = registry.build({"name": meta["name"], **stored, **extra}, where, **runtime)
        from safetensors.torch import load_model

        load_model(enc, os.path.join(path, "model.safetensors"))
        enc.spec = {"name": meta["name"], **stored, **extra}
        return enc
    enc = registry.build(spec, where, **runtime)
    enc.spec = spec
    return enc


# ---- per-encoder regularisation rates ------------------------------------------------------------------------
#: ``model.<modality>.{dropout, attention_dropout, drop_path}``: builders whose architecture has the rate take the key
#: (an unknown key is the registry's error naming it); a saved encoder directory's rates yield to the recipe's.
RATE_KEYS = ("dropout", "attention_dropout", "drop_path")
#: our rate → the transformers config fields that carry it (every one a config has is set)
HF_RATE_FIELDS = {"dropout": ("hidden_dropout_prob", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop"),
                  "attention_dropout": ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop"),
                  "drop_path": ("drop_path_rate",)}
#: our rate → timm's ``create_model`` argument (``dropout`` is timm's ``drop_rate``: dropout on the pooled features)
TIMM_RATE_ARGS = {"dropout": "drop_rate", "attention_dropout": "attn_drop_rate", "drop_path": "drop_path_rate"}


def set_hf_rates(config: Any, where: str, **rates: Optional[float]) -> Any:
    """``config`` (a transformers config) with the given rates set; a rate it has no field for is a ConfigError."""
    for key, value in rates.items():
        if value is None:
            continue
        fields = [f for f in HF_RATE_FIELDS[key] if hasattr(config, f)]
        if not fields:
            raise ConfigError(f"{where}.{key}={value}: {type(config).__name__} has no such rate (none of "
                              f"{', '.join(HF_RATE_FIELDS[key])}); remove {where}.{key}")
        for f in fields:
            setattr(config, f, value)
    return config


def hf_pretrained_rates(name_or_path: str, trust: bool, where: str, **rates: Optional[float]) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that apply the rates (its config with them set), or {} when none is."""
    if all(v is None for v in rates.values()):
        return {}
    from transformers import AutoConfig

    return {"config": set_hf_rates(AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust), where, **rates)}


def timm_rates(**rates: Optional[float]) -> dict[str, float]:
    """timm ``create_model`` arguments for the rates that are set."""
    return {TIMM_RATE_ARGS[k]: v for k, v in rates.items() if v is not None}


def timm_rate_error(err: TypeError, where: str, **rates: Optional[float]) -> Optional[ConfigError]:
    """The ConfigError naming ``where.<rate>`` when timm refused a rate argument the architecture lacks, else None."""
    for key, value in rates.items():
        if value is not None and f"'{TIMM_RATE_ARGS[key]}'" in str(err):
            return ConfigError(f"{where}.{key}={value}: this timm architecture has no {TIMM_RATE_ARGS[key]} ({err}); "
                               f"remove {where}.{key}")
    return None


def unexpected_option(err: TypeError, where: str, keys: Optional[Mapping[str, str]] = None) -> Optional[ConfigError]:
    """The ConfigError naming the config key behind the keyword argument a library's builder refused
    ("unexpected keyword argument 'x'"): ``keys`` maps argument names to config keys, else ``where.<argument>``.
    None for any other TypeError."""
    found = re.search(r"unexpected keyword argument '(\w+)'", str(err))
    if found is None:
        return None
    arg = found.group(1)
    key = (keys or {}).get(arg, f"{where}.{arg}")
    return ConfigError(f"{key}: the chosen architecture takes no option {arg!r} ({err}); remove {key}")


def hf_config(config: Mapping[str, Any], where: str, **extra: Any) -> Any:
    """``AutoConfig.for_model`` of ``config`` (``model_type`` plus fields) and ``extra``; a field the architecture's
    config does not define (transformers would keep it silently, unused) is a ConfigError naming
    ``<where>.config.<field>``."""
    from transformers import CONFIG_MAPPING, AutoConfig

    cfg = dict(config)
    kind = cfg.pop("model_type", None)
    if kind is None:
        raise ConfigError(f"{where}.config needs model_type (e.g. bert, vit, wav2vec2)")
    if kind not in CONFIG_MAPPING:
        raise ConfigError(f"{where}.config.model_type={kind!r}: transformers has no such model type")
    cls = CONFIG_MAPPING[kind]
    known = {*inspect.signature(cls.__init__).parameters, *cls().to_dict(), *getattr(cls, "attribute_map", {}),
             "num_labels"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"{where}.config.{unknown[0]}: {cls.__name__} has no field {unknown[0]!r} "
                          f"(unknown: {unknown}); remove it or use one of the config's fields")
    return AutoConfig.for_model(kind, **cfg, **extra)


def masked_mean(tokens: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean over real tokens. tokens (B, N, D), mask (B, N) → (B, D)."""
    if mask is None:
        return tokens.mean(1)
    w = mask.to(tokens.dtype).unsqueeze(-1)  # (B, N, 1)
    return (tokens * w).sum(1) / w.sum(1).clamp_min(1.0)


def release_freed_memory() -> None:
    """Hand memory freed by a discarded half of a model (e.g. the other tower of an open_clip CLIP) back to the
    OS: glibc's allocator keeps freed heap pages, and forked loader workers would inherit them. A no-op where
    ``malloc_trim`` does not exist (non-glibc systems)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    if trim is not None:
        trim(0)


_SHARED_CLIPS: contextvars.ContextVar[Optional[dict[str, tuple[Any, Optional[int]]]]] = contextvars.ContextVar(
    "shared_clips", default=None)


@contextlib.contextmanager
def one_clip_per_model() -> Iterator[None]:
    """Inside this block the open_clip image and text encoders of one model share one created CLIP (each keeps
    its own tower) instead of creating a CLIP each and discarding half of it: half the peak memory of building
    both towers. Outside it (an image- or text-only recipe) nothing is kept."""
    token = _SHARED_CLIPS.set({})
    try:
        yield
    finally:
        _SHARED_CLIPS.reset(token)


def open_clip_model(name_or_path: str, pretrained: Optional[str], model_cfg: Optional[Mapping[str, Any]],
                    image_size: Optional[int] = None, cache_dir: Optional[str] = None) -> Any:
    """``open_clip.create_model``, reused inside ``one_clip_per_model`` (a text tower takes any image size)."""
    import open_clip

    shared = _SHARED_CLIPS.get()
    key = json.dumps([name_or_path, pretrained, dict(model_cfg or {}), cache_dir], sort_keys=True, default=str)
    if shared is not None and key in shared and image_size in (None, shared[key][1]):
        return shared[key][0]
    model = open_clip.create_model(name_or_path, pretrained=pretrained, force_image_size=image_size,
                                   cache_dir=cache_dir, **dict(model_cfg or {}))
    if shared is not None:
        shared[key] = (model, image_size)
    return model

