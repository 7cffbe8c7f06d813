"""``mm-ptft fewshot ENCODER_DIR --data FILE --shots K``: few-shot evaluation of any saved encoder.

Every row of a labeled file (any table the recipes read; the encoder's modality picks the column) is embedded once
(the encoder's pooled output). Each of E seeded episodes draws K support rows per class (stratified, as
``data.labels_per_class`` does) and classifies every other row: by the nearest class prototype (cosine similarity
to the mean of the class's L2-normalised support embeddings, as Prototypical Networks / SimpleShot do) or by a
linear probe (scikit-learn's logistic regression on the normalised support embeddings). Reported: accuracy per
episode, their mean and the 95% confidence half-width 1.96 · sd / √E."""
from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from mm_ptft.config import ConfigError
from mm_ptft.data.folders import read_table
from mm_ptft.data.tables import LabelMap, per_class_sample, require_columns

METHODS = ("prototype", "linear_probe")


@dataclass
class Embedded:
    """Pooled embeddings of a labeled file's rows and their class indices."""

    vectors: np.ndarray  # (N, D)
    labels: np.ndarray  # (N,) class indices into ``names``
    names: list[str]


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # (N, D)


def prototype_predict(support: np.ndarray, support_y: np.ndarray, query: np.ndarray, n_classes: int) -> np.ndarray:
    """Class of each query row: the highest cosine similarity to a class mean of normalised support embeddings."""
    s = normalise(support)  # (S, D)
    protos = np.stack([s[support_y == c].mean(0) for c in range(n_classes)])  # (C, D)
    return (normalise(query) @ normalise(protos).T).argmax(1)  # (Q,)


def linear_probe_predict(support: np.ndarray, support_y: np.ndarray, query: np.ndarray, n_classes: int) -> np.ndarray:
    """Class of each query row from a logistic regression fitted on the normalised support embeddings."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise ConfigError("--method linear_probe needs scikit-learn (pip install scikit-learn); "
                          "--method prototype needs nothing more") from None

    clf = LogisticRegression(max_iter=2000).fit(normalise(support), support_y)
    return clf.predict(normalise(query))  # (Q,)


PREDICT = {"prototype": prototype_predict, "linear_probe": linear_probe_predict}


def episode_support(data: Embedded, shots: int, seed: int, episode: int) -> list[int]:
    """The support rows of one episode: ``shots`` per class, seeded by (seed, episode)."""
    return per_class_sample([data.names[y] for y in data.labels], shots, seed * 1_000_003 + episode,
                            LabelMap(data.names), f"--shots {shots}: the labeled rows")


def few_shot_accuracy(data: Embedded, shots: int, method: str = "prototype", episodes: int = 10,
                      seed: int = 0) -> dict[str, Any]:
    """Accuracy on the non-support rows over ``episodes`` seeded episodes: per episode, mean and 95% CI half-width."""
    if method not in PREDICT:
        raise ConfigError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if shots < 1 or episodes < 1:
        raise ConfigError(f"--shots {shots} and --episodes {episodes} must both be at least 1")
    accs = []
    for e in range(episodes):
        support = episode_support(data, shots, seed, e)
        query = np.setdiff1d(np.arange(len(data.labels)), support)
        if len(query) == 0:
            raise ConfigError(f"--shots {shots}: every row is a support row; nothing is left to classify")
        pred = PREDICT[method](data.vectors[support], data.labels[support], data.vectors[query], len(data.names))
        accs.append(float((pred == data.labels[query]).mean()))
    sd = float(np.std(accs, ddof=1)) if episodes > 1 else 0.0
    return {"method": method, "shots": shots, "episodes": episodes, "classes": len(data.names),
            "rows": int(len(data.labels)), "accuracy": float(np.mean(accs)),
            "accuracy_ci95": 1.96 * sd / math.sqrt(episodes), "accuracies": accs}


@torch.no_grad()
def embed_file(encoder: Any, path: str, column: Optional[str] = None, label_column: str = "label",
               batch_size: int = 32, device: str = "cpu") -> Embedded:
    """Pooled embeddings of every row of ``path`` through the multimodal recipe's row reader (the encoder's
    modality only): token ids / decoded media as in training, bad rows errors naming the row. ``device``: where the
    encoder runs (``auto``: CUDA when there is one)."""
    from mm_ptft.data.multimodal_rows import MultimodalRows, PresenceCollator, labeled_rows
    from mm_ptft.tasks.multimodal_classification import MMClsData
    from mm_ptft.tasks.pretrain_common import media_config

    m = encoder.modality
    d = MMClsData(modalities=[m], label_column=label_column)
    if column:
        setattr(d, f"{m}_column", column)
    table = read_table(path, "--data", d.folder())  # a folder of class sub-folders of the encoder's media
    require_columns(table, [getattr(d, f"{m}_column"), label_column], path,
                    hint="pass --column NAME (the input) / --label-column NAME (the class)")
    labels = LabelMap.from_values(table[label_column] if label_column in table.column_names else [], path)
    tok = getattr(encoder, "tokenizer", None)
    max_len = getattr(encoder, "max_length", d.max_length)
    media = media_config({m: encoder}, d)  # type: ignore[arg-type]
    rows = labeled_rows(table, path, d, labels, tok, max_len, media, {})
    ds = MultimodalRows(rows, [m], media, tok("")["input_ids"] if tok is not None else [], path)
    collate = PresenceCollator(tok.pad_token_id if tok is not None else 0)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)
    encoder.eval().to(dev)
    out = []
    for s in range(0, len(ds), batch_size):
        batch = collate([ds[i] for i in range(s, min(s + batch_size, len(ds)))])
        batch = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in batch.items()}
        out.append(encoder(batch).pooled.float().cpu())  # (b, D)
    return Embedded(torch.cat(out).numpy(), np.asarray([r["labels"] for r in rows]), [str(n) for n in labels.names])


def run_columns(encoder_dir: str, modality: str) -> tuple[Optional[str], Optional[str]]:
    """The input and label columns of the run an encoder directory came from (``RUN/`` or ``RUN/encoders/<m>/``):
    its ``config.yaml``'s ``data.<modality>_column`` and ``data.label_column``; (None, None) outside a run."""
    from mm_ptft.train.rundir import saved_config

    here = Path(encoder_dir)
    for run in (here, here.parent.parent if here.parent.name == "encoders" else None):
        saved = saved_config(run) if run is not None else None
        if saved is not None:
            data = saved.get("data") or {}
            return data.get(f"{modality}_column"), data.get("label_column")
    return None, None


def run_fewshot(encoder_dir: str, data: str, shots: int, method: str = "prototype", episodes: int = 10,
                seed: int = 0, column: Optional[str] = None, label_column: Optional[str] = None,
                trust_remote_code: bool = False, device: str = "auto") -> dict[str, Any]:
    """Load an encoder directory (or a run's single encoder), embed ``data`` and evaluate few-shot accuracy.
    ``column`` / ``label_column`` default to the columns of the run the encoder came from, else the modality's
    default input column and ``label``."""
    from mm_ptft.run.components import load_encoder

    encoder = load_encoder(encoder_dir, trust_remote_code=trust_remote_code)
    own_column, own_label = run_columns(encoder_dir, encoder.modality)
    embedded = embed_file(encoder, data, column or own_column, label_column or own_label or "label", device=device)
    result = few_shot_accuracy(embedded, shots, method, episodes, seed)
    return {"encoder": str(encoder_dir), "data": str(data), "modality": encoder.modality, **result}
