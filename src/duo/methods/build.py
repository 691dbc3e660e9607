"""Build a method and its backbone from a run configuration (plain PyTorch, no Lightning).

Everything that turns settings into a model lives here, so loading a checkpoint for
sampling and training a new run construct the same objects the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol

from torch import nn

from ..models import ModelConfig, build_model
from .registry import get_method_spec, model_overrides


class _RunConfig(Protocol):
    """What :func:`build_method` reads of a run configuration (``duo.config.TrainConfig``)."""

    algo: str
    algo_cfg: Any
    model: ModelConfig
    trainer: Any  # max_steps, loss_chunk_elements


class BuiltMethod(NamedTuple):
    backbone: nn.Module
    method: Any


def build_method(cfg: _RunConfig, tokenizer_vocab_size: int, max_steps: int | None = None,
                 model_vocab_size: int | None = None) -> BuiltMethod:
    """The backbone and method ``cfg`` describes, for a tokenizer of the given size.

    ``model_vocab_size`` overrides the embedding size (published weights carry their own);
    ``max_steps`` (default ``cfg.trainer.max_steps``) sets step-dependent parts such as
    the curriculum's length; the loss chunk comes from ``cfg.trainer.loss_chunk_elements``.
    """
    spec = get_method_spec(cfg.algo)
    vocab = model_vocab_size or spec.method_cls.model_vocab_size(tokenizer_vocab_size)
    model_cfg = dataclasses.replace(cfg.model, vocab_size=vocab, **model_overrides(cfg.algo, cfg.algo_cfg)).validate()
    backbone = build_model(model_cfg)
    steps = cfg.trainer.max_steps if max_steps is None else max_steps
    method = spec.method_cls(cfg.algo_cfg, backbone, vocab, steps,
                             loss_chunk_elements=cfg.trainer.loss_chunk_elements)
    return BuiltMethod(backbone, method)
