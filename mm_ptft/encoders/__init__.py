"""Pluggable encoders, one registry per modality."""
from mm_ptft.encoders.base import Encoder, build_encoder, layer_index
from mm_ptft.encoders.text import TEXT_ENCODERS

__all__ = ["Encoder", "build_encoder", "layer_index", "TEXT_ENCODERS"]
