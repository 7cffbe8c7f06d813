"""Export a trained run for serving: ONNX (``torch.onnx.export``) or TorchScript (``torch.jit.trace``),
optionally with dynamic int8 quantisation, plus a JSON file describing inputs and preprocessing.

    mm-ptft export RUN_DIR --format onnx|torchscript [--out PATH] [--quantize int8]
    mm-ptft export RUN_DIR --format hf|mm_ptft [--out DIR] [--push-to-hub REPO]   (mm_ptft.run.hub)

The exported graph takes plain tensors (no batch dict) and returns what the task's ``export_spec`` names
(logits; CTC models per-frame log-probs and frame lengths). Nothing here knows a task kind: the task gives
its spec and ``export_forward``, each encoder its preprocessing, the recipe which task a run exports.
Text tokenisation, image decoding/resizing and audio decoding stay outside the graph: the JSON says how to
do them (and the tokenizer is saved next to the model).
"""
from __future__ import annotations

import copy
import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch
from torch import nn

from mm_ptft.contracts import ExportError, export_spec  # noqa: F401 (re-exported: the export API)
from mm_ptft.contracts import ExportSpec as Spec
from mm_ptft.contracts import on_device
from mm_ptft.tasks.common import load_run
from mm_ptft.types import AUDIO, AUDIO_LENGTHS, IMAGE, TEXT, TEXT_MASK, VIDEO, VIDEO_MASK

FORMATS = ("onnx", "torchscript")
DIRECTORY_FORMATS = ("hf", "mm_ptft", "sentence_transformers", "open_clip")  # directories (mm_ptft.run.hub)
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
#: batch key → exported input name, dynamic axes
INPUTS: dict[str, tuple[str, dict[int, str]]] = {
    TEXT: ("input_ids", {0: "batch", 1: "sequence"}),
    TEXT_MASK: ("attention_mask", {0: "batch", 1: "sequence"}),
    IMAGE: ("pixel_values", {0: "batch"}),
    AUDIO: ("audio", {0: "batch"}),  # last axis (samples or feature frames) added below
    AUDIO_LENGTHS: ("audio_lengths", {0: "batch"}),
    VIDEO: ("video", {0: "batch"}),  # (N, T, C, H, W): T fixed at the run's data.sampling.num_frames
    VIDEO_MASK: ("video_mask", {0: "batch"}),
}


class ExportModule(nn.Module):
    """Plain tensors in, the task's ``export_forward`` outputs out: the task without the batch dict."""

    def __init__(self, task: nn.Module, spec: Spec) -> None:
        super().__init__()
        self.task, self.keys = task, list(spec.keys)

    def forward(self, *tensors: torch.Tensor) -> Any:
        return self.task.export_forward(dict(zip(self.keys, tensors)))


class TraceableMHA(nn.Module):
    """``nn.MultiheadAttention`` (batch_first, shared q/k/v size) written with shape-agnostic reshapes, sharing
    the original's weights: the legacy ONNX exporter bakes the traced sequence length into the stock one."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.mha, self.heads = mha, mha.num_heads

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = False,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        m = self.mha
        w_q, w_k, w_v = m.in_proj_weight.chunk(3)
        b_q, b_k, b_v = m.in_proj_bias.chunk(3) if m.in_proj_bias is not None else (None, None, None)
        B, L, D = query.shape
        h, d = self.heads, D // self.heads

        def split(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
            return nn.functional.linear(x, w, b).reshape(B, -1, h, d).transpose(1, 2)  # (B, h, L, d)

        q, k, v = split(query, w_q, b_q), split(key, w_k, b_k), split(value, w_v, b_v)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (B, h, L, S)
        for mask, expand in ((key_padding_mask, lambda x: x[:, None, None, :]), (attn_mask, lambda x: x)):
            if mask is not None:
                scores = scores.masked_fill(expand(mask), float("-inf")) if mask.dtype == torch.bool \
                    else scores + expand(mask).to(scores.dtype)
        if is_causal and attn_mask is None:
            causal = torch.ones(L, k.shape[2], dtype=torch.bool, device=q.device).triu(1)  # (L, S)
            scores = scores.masked_fill(causal, float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, -1, D)  # (B, L, D)
        return m.out_proj(out), None


def make_traceable(model: nn.Module) -> nn.Module:
    """Swap every batch-first ``nn.MultiheadAttention`` for ``TraceableMHA`` (in place; same weights)."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.MultiheadAttention) and child.batch_first and child._qkv_same_embed_dim:
            setattr(model, name, TraceableMHA(child))
        else:
            make_traceable(child)
    return model


def example_inputs(prepared: Any, spec: Spec, n: int = 2) -> tuple[torch.Tensor, ...]:
    """``n`` evaluation samples (of different lengths where possible), collated; dummies without eval data."""
    data = prepared.eval_data
    if data is not None and len(data) >= 1:
        items = [data[i] for i in range(min(len(data), 8))]
        if TEXT in spec.keys or AUDIO in spec.keys:  # pick rows of different lengths: padding is exercised
            key = TEXT if TEXT in spec.keys else AUDIO
            items = sorted(items, key=lambda it: len(it[key]) if key == TEXT else it[key].shape[-1])
            items = [items[0], items[-1]][:n] if len(items) > 1 else items
        batch = on_device(prepared.collate, prepared.collate(items[:n]), torch.device("cpu"))
        return tuple(batch[k] for k in spec.keys)
    raise ExportError("the run has no evaluation data to trace the model with; give data.eval_file "
                      "(mm-ptft export RUN_DIR ... with the run's data present)")


@contextmanager
def no_mha_fastpath() -> Iterator[None]:
    """Turn off ``nn.TransformerEncoderLayer``'s fused fast path (its check reads ``linear.weight``, a method
    on dynamically quantised layers; tracing wants the plain ops anyway)."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def quantize_int8(module: nn.Module) -> nn.Module:
    """Dynamic int8 quantisation of every ``nn.Linear`` (weights int8, activations quantised per batch; CPU)."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(copy.deepcopy(module).cpu().eval(), {nn.Linear}, dtype=torch.qint8)


def _dynamic_axes(spec: Spec, inputs: Sequence[torch.Tensor]) -> dict[str, dict[int, str]]:
    axes = {}
    for key, x in zip(spec.keys, inputs):
        name, dyn = INPUTS[key]
        dyn = dict(dyn)
        if key == AUDIO:
            dyn[x.dim() - 1] = "time"
        axes[name] = dyn
    return {**axes, **spec.output_axes}


def _describe(model: nn.Module, what: str) -> str:
    """``MultimodalClassifier with text encoder TinyTextTransformer (name: tiny), …``: for error messages."""
    parts = []
    for m, enc in getattr(model, "encoders", lambda: {})().items():
        parts.append(f"{m} encoder {type(enc).__name__} (name: {getattr(enc, 'spec', {}).get('name', '?')})")
    return f"{what} with {', '.join(parts) or type(model).__name__}"


def export_onnx(module: ExportModule, spec: Spec, inputs: tuple[torch.Tensor, ...], path: Path,
                opset: int = 17) -> None:
    """``torch.onnx.export`` (TorchScript-based exporter) with dynamic batch/sequence/time axes."""
    import warnings

    names = [INPUTS[k][0] for k in spec.keys]
    with torch.no_grad(), no_mha_fastpath(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        torch.onnx.export(module, inputs, str(path), input_names=names, output_names=spec.outputs,
                          dynamic_axes=_dynamic_axes(spec, inputs), opset_version=opset, dynamo=False,
                          do_constant_folding=True)


def export_torchscript(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> None:
    """``torch.jit.trace`` + save (load with ``torch.jit.load``)."""
    import warnings

    with torch.no_grad(), no_mha_fastpath(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, inputs, check_trace=False, strict=False)
    traced.save(str(path))


def run_onnx(path: str | Path, inputs: Mapping[str, Any]) -> list[Any]:
    """Outputs of an exported ONNX model under onnxruntime (CPU); ``inputs`` maps input name → array."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {k: np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()})


def preprocessing(task: nn.Module, prepared: Any, out: Path) -> dict[str, Any]:
    """What a server must do to raw inputs before the graph: each encoder's own steps, with what the eval
    dataset changes about them (e.g. multimodal rows decode media their own way)."""
    info = {m: enc.export_preprocessing(out) for m, enc in task.encoders().items()}
    overrides = getattr(prepared.eval_data, "export_preprocessing", None)
    for m, extra in (overrides(info) if callable(overrides) else {}).items():
        info.setdefault(m, {}).update(extra)
    return info


def sidecar(path: Path) -> Path:
    """The description written beside an exported model: ``model.onnx.json`` / ``model.pt.json`` (named per
    format, so an ONNX and a TorchScript export with one stem keep their own)."""
    return path.with_name(path.name + ".json")


def claim_out(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing model file (or its description) unless ``overwrite`` (``--overwrite``)."""
    taken = [p for p in (path, sidecar(path)) if p.exists()]
    if any(p.is_dir() for p in taken):
        raise ExportError(f"--out {path}: a directory is there; give a file path")
    if taken and not overwrite:
        raise ExportError(f"--out {path}: {', '.join(str(p) for p in taken)} exists; give another --out or pass "
                          f"--overwrite to replace it")


def default_out(run_dir: Path, fmt: str, quantize: Optional[str]) -> Path:
    return run_dir / "export" / f"model{'.' + quantize if quantize else ''}{SUFFIX[fmt]}"


def export_run(run_dir: str | Path, fmt: str = "onnx", out: Optional[str | Path] = None,
               quantize: Optional[str] = None, checkpoint: Optional[str] = None, check: bool = True,
               trust_remote_code: bool = False, push_to_hub: Optional[str] = None, overwrite: bool = False) -> Path:
    """Export a trained run; returns the model path (its description is ``sidecar(path)`` beside it), or for
    ``hf``/``mm_ptft`` the directory (uploaded to the Hub repo ``push_to_hub`` when given).
    ``trust_remote_code`` (``--trust-remote-code``) lets the run's encoders load their own code."""
    if fmt in DIRECTORY_FORMATS:  # a directory for transformers or mm_ptft.from_pretrained: see mm_ptft.run.hub
        if quantize:
            raise ExportError(f"--quantize applies to onnx and torchscript, not --format {fmt}")
        from mm_ptft.run.hub import export_pretrained

        return export_pretrained(run_dir, fmt, out, checkpoint, trust_remote_code, push_to_hub)
    if push_to_hub:
        raise ExportError(f"--push-to-hub uploads a directory: use --format hf or mm_ptft, not {fmt}")
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {list(FORMATS + DIRECTORY_FORMATS)}")
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize {quantize!r}: only 'int8' (dynamic, nn.Linear weights) is supported")
    run_dir = Path(run_dir)
    cfg, prepared, recipe = load_run(run_dir, checkpoint=checkpoint, trust_remote_code=trust_remote_code)
    prepared.task.cpu().eval()
    task, cfg = recipe.exported(cfg, prepared)  # e.g. a distilled run exports its student
    spec = export_spec(task)
    module = make_traceable(ExportModule(task, spec)).eval()
    inputs = example_inputs(prepared, spec)
    path = Path(out) if out else default_out(run_dir, fmt, quantize)
    claim_out(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    what = _describe(task, f"{type(task).__name__}")
    try:
        if fmt == "onnx":
            target = path.with_suffix(".fp32.onnx") if quantize else path
            export_onnx(module, spec, inputs, target)
            if quantize:  # onnxruntime's dynamic quantisation: the ONNX counterpart of quantize_dynamic
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantize_dynamic(str(target), str(path), weight_type=QuantType.QInt8)
                target.unlink()
        else:
            export_torchscript(quantize_int8(module) if quantize else module, inputs, path)
    except ExportError:
        raise
    except Exception as err:  # exporter failures come as many types: say which model and why
        msg = (str(err).splitlines() or [""])[0].split("  [Caused by")[0][:300]
        hint = ""
        if "STFT" in msg or "stft" in msg:
            hint = (" (a waveform-input audio encoder computes its log-mel with torch.stft, which the ONNX exporter "
                    "cannot write: train with model.audio.input_kind=features, or export --format torchscript)")
        raise ExportError(f"{what} does not export to {fmt}: {type(err).__name__}: {msg}{hint}") from err
    meta = describe(cfg, task, prepared, spec, inputs, fmt, quantize, path)
    if check:
        meta["check"] = check_export(path, fmt, module, spec, inputs)
    sidecar(path).write_text(json.dumps(meta, indent=2))
    return path


def describe(cfg: Any, task: nn.Module, prepared: Any, spec: Spec, inputs: Sequence[torch.Tensor], fmt: str,
             quantize: Optional[str], path: Path) -> dict[str, Any]:
    """The JSON written next to the model: inputs, outputs, preprocessing, label names / CTC vocabulary."""
    meta: dict[str, Any] = {
        "model": path.name, "format": fmt, "quantize": quantize, "task": cfg.task, "task_model": type(task).__name__,
        "inputs": [{"name": INPUTS[k][0], "batch_key": k, "dtype": str(x.dtype).replace("torch.", ""),
                    "shape": [(_dynamic_axes(spec, inputs)[INPUTS[k][0]].get(i, int(s))) for i, s in enumerate(x.shape)]}
                   for k, x in zip(spec.keys, inputs)],
        "outputs": spec.outputs,
        "preprocessing": preprocessing(task, prepared, path),
        **spec.meta,
    }
    if fmt == "torchscript":
        meta["load"] = "torch.jit.load(path); model(*inputs in the order above)"
    else:
        meta["load"] = "onnxruntime.InferenceSession(path).run(None, {input name: array})"
    return meta


@torch.no_grad()
def check_export(path: Path, fmt: str, module: nn.Module, spec: Spec,
                 inputs: Sequence[torch.Tensor]) -> dict[str, Any]:
    """Max abs difference of the exported model's first output from the fp32 PyTorch model on the trace inputs."""
    with no_mha_fastpath():
        ref = module(*inputs)
    ref = ref[0] if isinstance(ref, tuple) else ref
    if fmt == "onnx":
        got = torch.from_numpy(run_onnx(path, {INPUTS[k][0]: x for k, x in zip(spec.keys, inputs)})[0])
    else:
        got = torch.jit.load(str(path))(*inputs)
        got = got[0] if isinstance(got, tuple) else got
    diff = float((got.float() - ref.float()).abs().max())
    same = bool((got.argmax(-1) == ref.argmax(-1)).all())
    return {"inputs": "two evaluation samples", "output": spec.outputs[0], "max_abs_diff": diff,
            "same_argmax": same, "finite": math.isfinite(diff)}
