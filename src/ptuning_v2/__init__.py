"""P-Tuning v2: deep continuous prompts at every layer of a frozen pretrained transformer."""

__version__ = "0.1.0"
