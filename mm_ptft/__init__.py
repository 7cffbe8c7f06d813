"""mm_ptft: multimodal pretraining and fine-tuning."""
__version__ = "0.1.0"

from mm_ptft.env import guard_torchaudio as _guard_torchaudio

# A torchaudio built for another torch must not take text and image work down (transformers imports it
# when present); audio features then stop with a message naming the versions (see ``mm-ptft doctor``).
_guard_torchaudio()


def from_pretrained(path: str, trust_remote_code: bool = False):  # -> mm_ptft.hub.Pretrained
    """Load a directory written by ``mm-ptft export RUN --format mm_ptft``: ``.predict(raw inputs)``, ``.task``."""
    from mm_ptft.hub import from_pretrained as load

    return load(path, trust_remote_code=trust_remote_code)
