"""The pretraining task: encoders + weighted objectives, fed flat or mixed-source batches.

A batch is either one source's batch (``{"text": …, "image": …}``) or a mixed batch
``{source: sub-batch}`` from ``MixtureDataset``. Each sub-batch goes to every objective whose
modalities it carries; training returns each objective's ``*_loss`` parts and ``loss`` = their
weighted sum. Parts an objective reports that are not losses (``clm_nll_sum``, ``clm_tokens``) are
summed over sub-batches into ``out["totals"]`` for the metrics (perplexity); parts that are lists of strings
(a captioner's ``*_generated`` captions and ``*_references``) are concatenated into ``out["texts"]``. Evaluation adds normalised embeddings (for retrieval recall@K) and zero-shot logits
from class-name prompts (for ``zeroshot_accuracy``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mm_ptft.contracts import Task
from mm_ptft.encoders.base import Encoder
from mm_ptft.objectives import MODALITY_KEYS, EncodedBatch, Objective
from mm_ptft.objectives.captioning import CaptioningObjective
from mm_ptft.objectives.contrastive import ContrastiveObjective
from mm_ptft.types import TEXT, TEXT_MASK

if TYPE_CHECKING:
    from mm_ptft.metrics.retrieval import PretrainMetrics

Batch = Mapping[str, Any]


def is_mixed(batch: Batch) -> bool:
    """True for ``{source: sub-batch}`` batches (every value a dict)."""
    return bool(batch) and all(isinstance(v, Mapping) for v in batch.values())


def _rows(batch: Batch) -> int:
    return len(next(iter(batch.values())))


class PretrainTask(Task):
    """Encoders trained by several weighted objectives at once."""

    def __init__(self, encoders: Mapping[str, Encoder], objectives: Mapping[str, Objective],
                 weights: Optional[Mapping[str, float]] = None, sources: Sequence[str] = ("",),
                 prompts: Optional[tuple[torch.Tensor, torch.Tensor]] = None, num_classes: int = 0) -> None:
        super().__init__()
        if not objectives:
            raise ValueError("model.objectives is empty: give at least one objective")
        self.towers = nn.ModuleDict(dict(sorted(encoders.items())))
        self.objectives = nn.ModuleDict(dict(sorted(objectives.items())))
        self.weights = {k: float((weights or {}).get(k, 1.0)) for k in self.objectives}
        self.sources = sorted(sources)
        contrastive = [o for o in self.objectives.values() if isinstance(o, ContrastiveObjective)]
        self.retrieval: Optional[ContrastiveObjective] = contrastive[0] if contrastive else None
        for obj in self.objectives.values():  # an objective that reads another's outputs (ITM: the similarities)
            if hasattr(obj, "bind"):
                obj.bind(self.objectives)
        #: source modality → the objective that captions it (``predict`` on an image/audio file writes a caption)
        self.captioners: dict[str, CaptioningObjective] = {
            o.source: o for o in self.objectives.values() if isinstance(o, CaptioningObjective)}
        generating = [o for o in self.captioners.values() if o.generate_in_eval]
        self.main_metric = ("mean_r1" if self.retrieval else f"{generating[0].name}_cider" if generating else "loss")
        self.greater_is_better = self.main_metric != "loss"
        self.num_classes = 0
        if prompts is not None and self.retrieval is not None and "text" in self.retrieval.modalities:
            if not num_classes or prompts[0].shape[0] % num_classes:
                raise ValueError(f"{prompts[0].shape[0]} prompts do not split into num_classes={num_classes}")
            self.register_buffer("prompt_ids", prompts[0], persistent=False)  # (C * T, L)
            self.register_buffer("prompt_mask", prompts[1], persistent=False)  # (C * T, L)
            self.num_classes = num_classes

    # ---- training ---------------------------------------------------------------------------
    def forward(self, batch: Batch) -> dict[str, Any]:
        subs = dict(batch) if is_mixed(batch) else {"": batch}
        feats = {src: EncodedBatch(self.towers, sb) for src, sb in subs.items()}
        sums: dict[str, torch.Tensor] = {}
        totals: dict[str, torch.Tensor] = {}  # parts that are not losses (token counts…): summed as they are
        texts: dict[str, list[str]] = {}  # generated captions and their references: concatenated
        rows: dict[str, int] = {}
        owner: dict[str, str] = {}
        joined = self._sync_presence(subs)
        zero = torch.zeros((), device=self._device())  # joined all-gathers: exact zeros kept in the graph
        for name, obj in self.objectives.items():
            for src in sorted(set(subs) | set(joined.get(name, {}))):
                if src in subs and obj.applies_to(subs[src]):
                    n = _rows(subs[src])
                    for key, value in obj(feats[src], subs[src]).items():
                        if owner.setdefault(key, name) != name:
                            raise ValueError(f"objectives {owner[key]!r} and {name!r} both report {key!r}")
                        if isinstance(value, list):
                            texts[key] = texts.get(key, []) + value
                            continue
                        if not key.endswith("_loss"):
                            totals[key] = totals.get(key, 0.0) + value
                            continue
                        sums[key] = sums.get(key, 0.0) + value * n
                        rows[key] = rows.get(key, 0) + n
                elif src in joined.get(name, {}):
                    zero = zero + obj.join_collectives(self._device(), joined[name][src])  # type: ignore[operator]
        if not sums and not joined:
            raise ValueError(f"no objective applies to a batch with keys {self._keys(subs)}; objectives need "
                             f"{ {n: o.modalities for n, o in self.objectives.items()} }")
        out: dict[str, Any] = {k: sums[k] / rows[k] for k in sorted(sums)}
        out["loss"] = sum((self.weights[owner[k]] * v for k, v in out.items()), zero)
        if totals:
            out["totals"] = totals
        if texts:
            out["texts"] = texts
        if not self.training:
            self._eval_outputs(subs, feats, out)
        return out

    def _sync_presence(self, subs: Mapping[str, Batch]) -> dict[str, dict[str, list[tuple[str, str]]]]:
        """Under torchrun in training: which (gathering objective — contrastive or ITM —, source, pair) some other
        rank runs while this rank's batch lacks that source, so this rank joins its all-gathers."""
        if not self.training or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return {}
        slots = [(name, src, p) for name, obj in self.objectives.items() if hasattr(obj, "join_collectives")
                 for src in self.sources for p in (obj.pairs if isinstance(obj, ContrastiveObjective)
                                                   else [tuple(obj.modalities)])]
        if not slots:
            return {}
        local = [float(src in subs and all(MODALITY_KEYS[m] in subs[src] for m in p)) for _, src, p in slots]
        flags = torch.tensor(local, device=self._device())
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        joined: dict[str, dict[str, list[tuple[str, str]]]] = {}
        for (name, src, p), here, anywhere in zip(slots, local, flags.tolist()):
            if anywhere and not here and src not in subs:
                joined.setdefault(name, {}).setdefault(src, []).append(p)
        return joined

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @staticmethod
    def _keys(subs: Mapping[str, Batch]) -> dict[str, list[str]]:
        return {src: sorted(sb) for src, sb in subs.items()}

    # ---- evaluation -------------------------------------------------------------------------
    def _eval_outputs(self, subs: Mapping[str, Batch], feats: Mapping[str, EncodedBatch], out: dict[str, Any]) -> None:
        """Embeddings and zero-shot logits of the first (flat) eval batch's modalities."""
        if self.retrieval is None or len(subs) != 1:
            return
        (src, sb), = subs.items()
        present = [m for m in self.retrieval.modalities if MODALITY_KEYS[m] in sb]
        out["embeddings"] = {m: self.retrieval.embed(feats[src], m) for m in present}  # (B, E) each
        if self.num_classes:
            classes = self.class_embeddings()  # (C, E)
            out["zeroshot_logits"] = {m: e @ classes.T for m, e in out["embeddings"].items() if m != "text"}

    def class_embeddings(self) -> torch.Tensor:
        """One embedding per class: the mean of its normalised prompt embeddings, renormalised. (C, E)"""
        enc = self.towers["text"]({TEXT: self.prompt_ids, TEXT_MASK: self.prompt_mask})
        emb = F.normalize(self.retrieval.proj["text"](enc.pooled).float(), dim=-1)  # type: ignore[union-attr]
        return F.normalize(emb.view(self.num_classes, -1, emb.shape[-1]).mean(1), dim=-1)  # (C, E)

    # ---- export --format hf: an image captioner as a transformers VisionEncoderDecoderModel ------------------
    def export_hf(self) -> nn.Module:
        from mm_ptft.heads.caption_hf import vision_encoder_decoder

        return vision_encoder_decoder(self)

    def export_hf_files(self, path: Any, max_length: Optional[int] = None) -> None:
        from mm_ptft.heads.caption_hf import save_caption_files

        save_caption_files(self, path, max_length)

    def hf_parity(self, model: nn.Module, batch: Batch) -> dict[str, Any]:
        """Same greedy caption tokens from the exported model as from the run (``caption_hf.caption_parity``)."""
        from mm_ptft.heads.caption_hf import caption_parity

        return caption_parity(self, model, batch)

    def build_metrics(self) -> "PretrainMetrics":
        from mm_ptft.metrics.retrieval import PretrainMetrics  # torchmetrics: imported only to evaluate

        pairs = self.retrieval.pairs if self.retrieval else []
        return PretrainMetrics(pairs, self.num_classes)
