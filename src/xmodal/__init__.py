"""xmodal: cross-modal learning and distillation from raw video to evaluated models."""

__version__ = "0.1.0"
