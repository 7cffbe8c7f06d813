"""Hand a trained run to the ecosystem: a directory transformers loads as-is (``--format hf``), a
self-describing directory ``mm_ptft.from_pretrained`` loads (``--format mm_ptft``), a model card for both,
and an upload through ``huggingface_hub`` (``--push-to-hub REPO``).

    mm-ptft export RUN_DIR --format hf|mm_ptft [--out DIR] [--push-to-hub REPO]

``hf``: the task gives its transformers model (``Task.export_hf``: the encoder's ``*For<Task>`` class with
the task's head as its classifier); before anything is written its outputs are compared with the run's own on
evaluation samples, and a model that predicts otherwise (another pooling, another head) is refused with the
reason. ``mm_ptft``: any task — weights, resolved config, tokenizer/vocabulary files and a manifest.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from mm_ptft.contracts import ExportError, export_spec, parity_batch
from mm_ptft.train.rundir import final_record, final_results

MANIFEST = "mm_ptft.json"
WEIGHTS = "model.safetensors"
PARITY_TOL = 1e-4  # max |Δ probability| between the transformers model and the run's task


# ---- --format hf ------------------------------------------------------------------------------------------

@torch.no_grad()
def parity(task: nn.Module, model: nn.Module, spec: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """How far the transformers model's probabilities (per class, or per frame and token for CTC) are from the
    task's on the same batch."""
    out = task.export_forward({k: batch[k] for k in spec.keys})
    ref = (out[0] if isinstance(out, tuple) else out).float()  # (B, C) logits or (B, N, V) log-probs
    ref = ref.exp() if spec.outputs[0] == "log_probs" else ref.softmax(-1)
    hf_in: dict[str, Any] = {}
    for enc in task.encoders().values():
        hf_in.update(enc.hf_model_inputs(batch))
    got = model(**hf_in).logits.float().softmax(-1)  # same shape as ref
    return {"samples": int(ref.shape[0]), "max_abs_diff_prob": float((got - ref).abs().max()),
            "same_argmax": bool((got.argmax(-1) == ref.argmax(-1)).all())}


def write_hf(task: nn.Module, cfg: Any, prepared: Any, out: Path) -> dict[str, Any]:
    """The transformers directory: ``save_pretrained`` of ``task.export_hf()`` plus the tokenizer/processor."""
    from mm_ptft.train.finetune import merged_copy

    task = merged_copy(task)  # LoRA adapters folded into the weights transformers will hold
    try:
        model = task.export_hf()
    except NotImplementedError as err:
        raise ExportError(f"--format hf: {err} (--format mm_ptft writes any run for mm_ptft.from_pretrained)") from None
    batch = parity_batch(prepared, "hf")
    if hasattr(task, "hf_parity"):  # a generative task: same generated tokens (contracts.GenerativeTask)
        check = task.hf_parity(model, batch)
        if not check["ok"]:
            raise ExportError(f"--format hf: {type(model).__name__} " + check.get(
                "mismatch", f"generates otherwise than the run on {check['samples']} evaluation prompts (greedy)")
                + "; nothing written")
    else:
        check = parity(task, model, export_spec(task), batch)
    if "max_abs_diff_prob" in check and not (check["same_argmax"] and check["max_abs_diff_prob"] <= PARITY_TOL):
        raise ExportError(f"--format hf: {type(model).__name__} predicts otherwise than the run "
                          f"(max |Δprob| {check['max_abs_diff_prob']:.2e} on {check['samples']} evaluation samples); "
                          f"nothing written{_hints(task)}: export --format mm_ptft instead")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    task.export_hf_files(out, max_length(cfg, task))
    return {"class": type(model).__name__, "parity": check}


def _hints(task: nn.Module) -> str:
    hints = [h for h in (getattr(e, "hf_pooling_hint", "") for e in task.encoders().values()) if h]
    return f" ({'; '.join(hints)})" if hints else ""


def max_length(cfg: Any, task: nn.Module) -> Optional[int]:
    """The token limit the run's ``predict`` truncates to: ``data.max_length`` capped by the text encoder's."""
    limits = [getattr(getattr(cfg, "data", None), "max_length", None)]
    limits += [getattr(e, "max_length", None) for e in task.encoders().values()]
    limits = [x for x in limits if isinstance(x, int) and x > 0]
    return min(limits) if limits else None


# ---- --format mm_ptft -------------------------------------------------------------------------------------

def _inside(value: Any, root: Path) -> Optional[Path]:
    """``value`` as a path relative to ``root`` when it names an existing file or directory inside it."""
    if not isinstance(value, str) or not value or "\n" in value:
        return None
    try:
        rel = Path(value).resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return None
    return rel if str(rel) != "." and (root / rel).exists() else None


def _carry(node: Any, run_dir: Path, out: Path) -> Any:
    """Copy every local file/directory the model config names into ``out`` (a file of the run keeps its place in
    it; another, e.g. a teacher run's tokenizer, goes under ``files/``); point the config at the copies."""
    if isinstance(node, dict):
        return {k: _carry(v, run_dir, out) for k, v in node.items()}
    if isinstance(node, list):
        return [_carry(v, run_dir, out) for v in node]
    if not isinstance(node, str) or "\n" in node or not os.path.isabs(node) or not os.path.exists(node):
        return node  # names (tiny, bert, a hub id) and relative strings are not files to carry
    src = Path(node).resolve()
    rel = _inside(node, run_dir) or Path("files") / src.name
    if not (out / rel).exists():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, out / rel) if src.is_dir() else shutil.copy2(src, out / rel)
    return "${output_dir}/" + rel.as_posix()


def write_mm_ptft(task: nn.Module, cfg: Any, run_dir: Path, out: Path) -> dict[str, Any]:
    """Weights (safetensors), the resolved config with the run's model files carried along, and the manifest.
    Encoders loaded from elsewhere (a hub id, a pretraining run) are saved under ``encoders/<modality>`` so
    the directory rebuilds offline."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_model

    from mm_ptft.config import to_dict
    from mm_ptft.train.finetune import merged_copy
    from mm_ptft.tasks.common import drop_data_files

    cfg = copy.deepcopy(cfg)
    drop_data_files(cfg)  # the model alone: labels, vocabulary and tokenizer travel, data does not
    d = to_dict(cfg)
    model_cfg = d.get("model") or {}
    for modality, enc in task.encoders().items():  # first: a hub id or another run's encoder → encoders/<m>
        spec = model_cfg.get(modality)
        if isinstance(spec, dict) and spec.get("name_or_path") and not _inside(spec["name_or_path"], run_dir):
            merged_copy(enc).save_pretrained(out / "encoders" / modality)
            spec["name_or_path"] = f"${{output_dir}}/encoders/{modality}"
    d["model"] = _carry(model_cfg, run_dir, out)
    d["output_dir"] = "."
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(d)))
    save_model(task, str(out / WEIGHTS))
    return {"config": "config.yaml", "weights": WEIGHTS, "encoders": sorted(task.encoders())}


@dataclass
class Pretrained:
    """A model loaded by ``mm_ptft.from_pretrained``: ``predict(raw inputs)`` as ``mm-ptft predict``,
    ``task(batch)`` for tensors, ``cfg`` the run's resolved config (data files dropped)."""

    cfg: Any
    prepared: Any
    recipe: Any

    @property
    def task(self) -> nn.Module:
        return self.prepared.task

    @torch.no_grad()
    def predict(self, inputs: Sequence[Any]) -> list[dict[str, Any]]:
        return list(self.recipe.predict(self.cfg, self.prepared, list(inputs)))

    def __call__(self, batch: dict[str, Any]) -> Any:
        with torch.no_grad():
            return self.task(batch)


def from_pretrained(path: str | Path, trust_remote_code: bool = False) -> Pretrained:
    """Load a directory written by ``mm-ptft export --format mm_ptft`` into a ready-to-predict model (eval mode).
    Like a run directory it is data, not code: remote code stays off unless ``trust_remote_code``."""
    import contextlib

    from safetensors.torch import load_model

    from mm_ptft.encoders.base import untrusted_source
    from mm_ptft.train.finetune import apply_finetune
    from mm_ptft.tasks import get_recipe, load_config

    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        hint = (" (it holds config.json: a transformers directory — load it with transformers' AutoModelFor… classes)"
                if (path / "config.json").is_file() else "")
        raise FileNotFoundError(f"{path}: no {MANIFEST}; not a directory written by mm-ptft export --format mm_ptft{hint}")
    meta = json.loads(manifest.read_text())
    if meta.get("format") != "mm_ptft":
        raise ValueError(f"{manifest}: format {meta.get('format')!r}; from_pretrained loads format 'mm_ptft' "
                         f"(a --format hf directory loads with transformers)")
    cfg = load_config(path / meta["config"], [f"output_dir={json.dumps(str(path.resolve()))}"])
    recipe = get_recipe(cfg.task)
    with contextlib.nullcontext() if trust_remote_code else untrusted_source(str(path)):
        prepared = recipe.prepare(cfg, train=False)
    apply_finetune(prepared.task, cfg.finetune)  # the same modules (e.g. LoRA adapters) as the saved weights
    missing, unexpected = load_model(prepared.task, str(path / meta["weights"]), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path / meta['weights']}: weights do not fit the model the config builds: missing "
                         f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    prepared.task.eval()
    return Pretrained(cfg, prepared, recipe)


# ---- model card ---------------------------------------------------------------------------------------------

PIPELINE = {"AutoModelForSequenceClassification": "text-classification",
            "AutoModelForImageClassification": "image-classification", "AutoModelForCTC": "automatic-speech-recognition",
            "AutoModelForCausalLM": "text-generation", "AutoModelForQuestionAnswering": "question-answering",
            "AutoModelForSpeechSeq2Seq": "automatic-speech-recognition"}
# classes named ambiguously (WhisperForConditionalGeneration, like T5's) are looked up in transformers' auto maps
AUTO_MAPS = {"AutoModelForSpeechSeq2Seq": "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES"}


def auto_class(hf_class: Optional[str]) -> Optional[str]:
    """The ``PIPELINE`` auto class of an exported transformers class: by suffix (``Wav2Vec2ForCTC`` →
    ``AutoModelForCTC``), else by membership in transformers' auto mapping (``AUTO_MAPS``); None when neither says."""
    if not hf_class:
        return None
    auto = next((a for a in PIPELINE if hf_class.endswith(a.replace("AutoModel", ""))), None)
    if auto:
        return auto
    from transformers.models.auto import modeling_auto

    return next((a for a, name in AUTO_MAPS.items() if hf_class in getattr(modeling_auto, name, {}).values()), None)


def data_cards(data: dict[str, Any], out: Path) -> list[str]:
    """Copy the repository's ``data_cards/<name>.md`` for the run's data generator or data files into
    ``out/data_cards/``; their paths relative to ``out``."""
    root = Path(__file__).resolve().parents[2] / "data_cards"
    gen = data.get("generate") or {}
    names = [gen.get("name")] if isinstance(gen, dict) else []
    names += [Path(v).parent.name for k, v in data.items() if k != "generate" and isinstance(v, str) and v]
    found = []
    for name in dict.fromkeys(n for n in names if n):
        card = root / f"{name}.md"
        if card.is_file():
            (out / "data_cards").mkdir(parents=True, exist_ok=True)
            shutil.copy2(card, out / "data_cards" / card.name)
            found.append(f"data_cards/{card.name}")
    return found


def checkpoint_metrics(run_dir: Path, source: Optional[Path]) -> tuple[Optional[int], Optional[dict[str, Any]], str]:
    """(step, metrics, name) of the checkpoint exported: the run's evaluation at that checkpoint's step
    (``metrics.jsonl``; the last such row), not the last evaluation's; without a checkpoint, ``final_metrics.json``."""
    from mm_ptft.train.checkpoint import META

    if source is None or not (source / META).is_file():
        record = final_record(run_dir) or {}
        return record.get("step"), final_results(run_dir), "final weights"
    step = int(json.loads((source / META).read_text())["step"])
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()] \
        if (run_dir / "metrics.jsonl").is_file() else []
    evals = [r for r in rows if r.get("kind") == "eval" and r.get("step") == step]
    metrics = {k: v for k, v in evals[-1].items() if k not in ("step", "kind", "time")} if evals else None
    name = f"checkpoints/{source.name}" if source.parent.name == "checkpoints" else str(source)
    return step, metrics, name


def model_card(run_dir: Path, cfg: Any, task: nn.Module, fmt: str, info: dict[str, Any], data: dict[str, Any],
               out: Path, source: Optional[Path] = None) -> str:
    """README.md: metrics (of ``source``, the checkpoint exported: ``checkpoint_metrics``), data (and its card),
    labels, intended use and limits, how to load, the resolved config."""
    from mm_ptft.train.rundir import config_yaml, run_relative

    step, metrics, where = checkpoint_metrics(run_dir, source)
    labels = list(getattr(task, "labels", []) or [])
    hf_class = info.get("class")
    auto = auto_class(hf_class)
    library = {"hf": "transformers", "sentence_transformers": "sentence-transformers",
               "open_clip": "open_clip"}.get(fmt, "mm_ptft")
    front = ["---", f"library_name: {library}", "tags:", "- mm_ptft",
             f"- {cfg.task}"]
    if auto:
        front.append(f"pipeline_tag: {PIPELINE[auto]}")
    front.append("---")
    lines = [*front, "", f"# {cfg.task.replace('_', ' ')} — {type(task).__name__}", "",
             f"Fine-tuned with mm_ptft (`task: {cfg.task}`) and exported with "
             f"`mm-ptft export RUN --format {fmt}`.", ""]
    lines += ["## Evaluation", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" if isinstance(v, (int, float)) else
                                                      f"| {k} | {v} |" for k, v in metrics.items()]
        lines += ["", f"On the run's evaluation split, of the weights exported here: checkpoint `{where}` (step {step}), "
                  f"as the run evaluated it at that step."]
    else:
        lines += [f"No evaluation of the exported checkpoint `{where}` (step {step}) is recorded in the run."]
    lines += ["", "## Data", ""]
    named = {k: (run_relative(v, run_dir) or v) if isinstance(v, str) else v for k, v in data.items() if v}
    lines += [f"- `data.{k}`: `{v}`" for k, v in named.items()] or ["- (the config names no data files)"]
    cards = data_cards(data, out)
    lines += [""] + ([f"Dataset card{'s' if len(cards) > 1 else ''} (licence, provenance, known biases), copied here: "
                      + ", ".join(f"[`{c}`]({c})" for c in cards)] if cards else
                     ["No dataset card matched the data above: document its licence and provenance before sharing."])
    if labels:
        lines += ["", "## Labels", "", ", ".join(f"`{i}: {n}`" for i, n in enumerate(labels))]
    lines += ["", "## Intended use and limitations", "",
              f"Predicting the labels above for inputs like the training data of this run ({cfg.task}). It has seen "
              "only that data: inputs from another domain, language or recording condition, and labels outside "
              "the list, are not covered, and the metrics above hold for the evaluation split only. Check it on "
              "your own data before relying on it; do not use it for decisions about people without such a check."]
    lines += ["", "## How to load", ""]
    if fmt == "hf":
        check = info["parity"]
        pre = {"AutoModelForSequenceClassification": "AutoTokenizer", "AutoModelForCausalLM": "AutoTokenizer",
               "AutoModelForQuestionAnswering": "AutoTokenizer"}.get(auto or "", "AutoProcessor")
        lines += ["```python", f"from transformers import {pre}, {auto or 'AutoModel'}", "",
                  f"model = {auto or 'AutoModel'}.from_pretrained(PATH_OR_REPO).eval()",
                  f"pre = {pre}.from_pretrained(PATH_OR_REPO)"]
        lines += {
            "AutoModelForSequenceClassification": [
                "batch = pre([\"some text\"], padding=True, truncation=True, return_tensors=\"pt\")",
                "probs = model(**batch).logits.softmax(-1)",
                "print(model.config.id2label[int(probs.argmax(-1)[0])])"],
            "AutoModelForImageClassification": [
                "probs = model(**pre([PIL.Image.open(\"x.png\").convert(\"RGB\")], return_tensors=\"pt\")).logits.softmax(-1)",
                "print(model.config.id2label[int(probs.argmax(-1)[0])])"],
            "AutoModelForCTC": [
                "inputs = pre(waveform, sampling_rate=pre.feature_extractor.sampling_rate, return_tensors=\"pt\")",
                "print(pre.batch_decode(model(**inputs).logits.argmax(-1)))   # greedy CTC"],
            "AutoModelForCausalLM": [  # the run's decoding is the directory's generation_config
                "ids = pre(PROMPT, return_tensors=\"pt\")   # PROMPT: formatted as docs/generative.md says",
                "print(pre.decode(model.generate(**ids)[0, ids[\"input_ids\"].shape[1]:], skip_special_tokens=True))"],
            "AutoModelForQuestionAnswering": [  # one window; mm-ptft predict also strides long contexts
                "enc = pre(QUESTION, CONTEXT, truncation=\"only_second\", return_offsets_mapping=True, return_tensors=\"pt\")",
                "offsets, ctx = enc.pop(\"offset_mapping\")[0], enc.sequence_ids(0)",
                "out = model(**enc)",
                "keep = out.start_logits.new_tensor([s == 1 for s in ctx]).bool()   # context tokens only",
                "s = int(out.start_logits[0].masked_fill(~keep, -1e9).argmax())",
                "e = s + int(out.end_logits[0, s:].masked_fill(~keep[s:], -1e9).argmax())",
                "print(CONTEXT[offsets[s][0]:offsets[e][1]])"],
        }.get(auto or "", [])
        unit = "per-frame token" if auto == "AutoModelForCTC" else "class"
        lines += ["```", ""]
        lines += [f"Checked at export: `{hf_class}` {check['summary']}."] if "summary" in check else [
                  f"Checked at export: `{hf_class}` generates the run's tokens (greedy) for {check['samples']} "
                  f"evaluation prompts."] if "same_generated_tokens" in check else [
                  f"Checked at export: `{hf_class}` gives the run's {unit} probabilities within "
                  f"{check['max_abs_diff_prob']:.1e} (max |Δprob|, same argmax: {check['same_argmax']}) on "
                  f"{check['samples']} evaluation samples."]
    elif fmt == "sentence_transformers":
        check = info["parity"]
        lines += ["```python", "from sentence_transformers import SentenceTransformer", "",
                  "model = SentenceTransformer(PATH_OR_REPO)",
                  "probs = model.encode([\"some text\"], convert_to_tensor=True).softmax(-1)   # class logits",
                  "```", "", f"Transformer + Pooling ({info['pooling']}) + Dense (the classifier, identity "
                  f"activation). Checked at export: within {check['max_abs_diff_prob']:.1e} of the run's class "
                  f"probabilities on {check['samples']} evaluation samples."]
    elif fmt == "open_clip":
        check = info["parity"]
        lines += ["```python", "import open_clip", "",
                  "model, _, preprocess = open_clip.create_model_and_transforms(\"local-dir:PATH\")",
                  "tokenizer = open_clip.get_tokenizer(\"local-dir:PATH\")", "```", "",
                  f"The run's contrastive projections are folded into the towers (embed_dim {info['embed_dim']}). "
                  f"Checked at export: normalised embeddings within {check['max_abs_diff_embedding']:.1e} and "
                  f"image→text logits within {check['max_abs_diff_logit']:.1e} of the run's on "
                  f"{check['samples']} evaluation pairs."]
    else:
        lines += ["```python", "import mm_ptft", "", "model = mm_ptft.from_pretrained(PATH)",
                  "print(model.predict([...]))   # raw inputs, as `mm-ptft predict`", "```"]
    lines += ["", "## Training configuration", "", "The run's resolved `config.yaml`:", "", "```yaml",
              config_yaml(cfg).rstrip(), "```", ""]
    return "\n".join(lines)


# ---- upload ---------------------------------------------------------------------------------------------------

def push_to_hub(folder: Path, repo_id: str, commit_message: Optional[str] = None, private: bool = False) -> str:
    """Create ``repo_id`` (if missing) and upload ``folder`` with ``huggingface_hub``; returns the commit URL."""
    try:
        from huggingface_hub import HfApi
    except ImportError as err:  # an optional extra
        raise ExportError("--push-to-hub needs huggingface_hub (pip install huggingface_hub)") from err
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                             commit_message=commit_message or f"Upload {folder.name} (mm-ptft export)")
    return str(getattr(info, "commit_url", info))


def _source(run_dir: Path, checkpoint: Optional[str]) -> Optional[Path]:
    """The checkpoint ``load_run`` loads (as ``eval``/``predict`` pick it), None for a run without one."""
    from mm_ptft.tasks.common import pick_checkpoint

    try:
        return pick_checkpoint(run_dir, checkpoint)
    except FileNotFoundError:
        return None


# ---- entry --------------------------------------------------------------------------------------------------

def export_pretrained(run_dir: str | Path, fmt: str = "hf", out: Optional[str | Path] = None,
                      checkpoint: Optional[str] = None, trust_remote_code: bool = False,
                      push: Optional[str] = None) -> Path:
    """Write ``run_dir`` as a transformers (``hf``), sentence-transformers, open_clip or ``mm_ptft`` directory
    with a model card; returns it."""
    from mm_ptft.tasks.common import load_run

    if fmt not in ("hf", "mm_ptft", "sentence_transformers", "open_clip"):
        raise ExportError(f"--format {fmt!r}: choose hf, mm_ptft, sentence_transformers or open_clip")
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "export" / fmt
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty: give another --out or remove it")
    cfg, prepared, recipe = load_run(run_dir, checkpoint=checkpoint, trust_remote_code=trust_remote_code)
    prepared.task.cpu().eval()
    source = _source(run_dir, checkpoint)
    data = {k: getattr(cfg.data, k, None) for k in ("train_file", "eval_file", "generate")} if hasattr(cfg, "data") else {}
    task, cfg = recipe.exported(cfg, prepared)
    if fmt == "hf":
        info = write_hf(task, cfg, prepared, out)
    elif fmt == "sentence_transformers":
        from mm_ptft.run.sentence_transformers import write_sentence_transformers

        info = write_sentence_transformers(task, max_length(cfg, task), prepared, out)
    elif fmt == "open_clip":
        from mm_ptft.run.open_clip_export import write_open_clip

        info = write_open_clip(task, cfg, prepared, out)
    else:
        info = write_mm_ptft(task, cfg, run_dir, out)
    manifest = {"format": fmt, "task": cfg.task, "task_model": type(task).__name__,
                "labels": list(getattr(task, "labels", []) or []), "source_run": run_dir.name, **info}
    step, metrics, where = checkpoint_metrics(run_dir, source)
    manifest.update(checkpoint=where, step=step, metrics=metrics)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    (out / "README.md").write_text(model_card(run_dir, cfg, task, fmt, info, data, out, source))
    if push:
        push_to_hub(out, push)
    return out


__all__ = ["Pretrained", "export_pretrained", "from_pretrained", "model_card", "push_to_hub"]
