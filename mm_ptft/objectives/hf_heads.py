"""Pretrained head weights from the Hugging Face checkpoint a text encoder was loaded from.

``BertForPreTraining`` saves its MLM and NSP heads as ``cls.predictions.*`` / ``cls.seq_relationship.*``
and ``*ForCausalLM`` an untied ``lm_head.*``; ``AutoModel`` drops them when it loads the encoder. The
objectives' ``init_from_pretrained_head`` option reads them back from the same directory.
"""
from __future__ import annotations

from pathlib import Path

import torch

from mm_ptft.encoders.base import Encoder


def pretrained_head_weights(encoder: Encoder, prefix: str, where: str) -> dict[str, torch.Tensor]:
    """Tensors named ``prefix*`` in the safetensors files of the encoder's ``name_or_path`` directory, keyed
    without the prefix ({} when none has it). A clear error when the encoder was not loaded from a local
    directory of safetensors files."""
    from safetensors import safe_open

    path = getattr(encoder, "spec", {}).get("name_or_path")
    files = sorted(Path(path).glob("*.safetensors")) if path and Path(path).is_dir() else []
    if not files:
        m = getattr(encoder, "modality", "text")
        raise ValueError(f"{where}.init_from_pretrained_head: the {m} encoder was not loaded from a local directory "
                         f"of safetensors weights (model.{m}.name_or_path={path!r}); give the directory a "
                         f"transformers *ForPreTraining / *ForCausalLM model was saved to, or drop the option")
    found: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), "pt") as st:
            for key in st.keys():
                if key.startswith(prefix):
                    found[key[len(prefix):]] = st.get_tensor(key)
    return found
