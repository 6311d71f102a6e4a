"""hfmm: CLIP and NeVA models, native to Hugging Face transformers."""

__version__ = "0.1.0.dev0"
