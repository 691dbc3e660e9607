"""Training with PyTorch Lightning: the only package that imports Lightning."""

from .run import TrainResult, train

__all__ = ["TrainResult", "train"]
