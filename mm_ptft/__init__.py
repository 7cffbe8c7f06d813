"""mm_ptft: multimodal pretraining and fine-tuning."""
__version__ = "0.1.0"
