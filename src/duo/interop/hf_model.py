"""``transformers`` integration without remote code: a duo export folder, its loader, and
the ``DuoConfig`` / ``DuoModel`` Auto classes.

An export folder (written by ``duo export RUN OUT``) has the layout the Hub's Duo / MDLM
repos use, which :mod:`.official` already reads: ``config.json`` (``model_type`` duo /
mdlm / ar, ``hidden_dim``, ``cond_dim``, ``n_blocks``, ``n_heads``, ``model_length``,
``vocab_size``, ...) and ``model.safetensors`` (keys ``backbone.*``), plus

- ``duo_config`` in ``config.json``: the run's full configuration (schedule, eps, ...),
  so that loading rebuilds exactly the trained method, and ``duo_metadata``;
- the tokenizer's own files (``duo_tokenizer.json`` and its backend's files);
- ``sampling_config.json`` and ``README.md`` (the model card).

This half of the module (:func:`is_duo_export`, :func:`load_export`,
:func:`export_config`) is plain PyTorch. The Auto classes need ``transformers``
(seconds to import), so they are built on first use: ``import duo.interop.hf_model``
does not import it, ``from duo.interop.hf_model import DuoModel`` or
:func:`register_auto_classes` does and registers them, and ``import duo.interop``
registers them for free when ``transformers.modeling_utils`` is already imported.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["CONFIG_KEY", "MODEL_TYPES", "export_config", "is_duo_export", "load_export", "read_export_config",
           "register_auto_classes"]

CONFIG_KEY = "duo_config"  # what tells a duo export from other HF folders
# algo -> (config.json model_type, config class, model class)
MODEL_TYPES = {"duo": ("duo", "DuoConfig", "DuoModel"), "mdlm": ("mdlm", "DuoMdlmConfig", "DuoMdlmModel"),
               "ar": ("ar", "DuoArConfig", "DuoArModel")}
_CLASS_NAMES = {name for _, c, m in MODEL_TYPES.values() for name in (c, m)}


# --- the plain half: folders ---------------------------------------------------------

def _plain(obj: Any) -> Any:
    """JSON-safe copy (paths and other objects as strings)."""
    return json.loads(json.dumps(obj, default=str))


def export_config(loaded) -> dict[str, Any]:
    """``config.json`` of a loaded model: the official keys plus ``duo_config``."""
    cfg, model = loaded.cfg, loaded.cfg.model
    model_type, config_cls, model_cls = MODEL_TYPES[loaded.algo]
    emb = loaded.backbone.vocab_embed.embedding
    return {
        "model_type": model_type, "architectures": [model_cls], "algo": loaded.algo,
        "vocab_size": int(emb.shape[0]), "tokenizer_vocab_size": int(loaded.tokenizer.vocab_size),
        "hidden_dim": model.hidden_size, "cond_dim": model.cond_dim, "n_blocks": model.n_blocks,
        "n_heads": model.n_heads, "mlp_ratio": model.mlp_ratio, "dropout": model.dropout,
        "model_length": cfg.data.seq_len, "max_seq_len": model.max_seq_len,
        "causal": loaded.algo == "ar",
        "time_conditioning": bool(getattr(cfg.algo_cfg, "time_conditioning", loaded.algo != "ar")),
        CONFIG_KEY: _plain(cfg.to_dict()), "duo_metadata": _plain(loaded.metadata or {}),
    }


def read_export_config(folder: str | Path) -> dict[str, Any] | None:
    """``config.json`` of a duo export, or None for any other folder."""
    path = Path(folder).expanduser() / "config.json"
    if not path.is_file():
        return None
    try:
        conf = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return conf if isinstance(conf, dict) and isinstance(conf.get(CONFIG_KEY), dict) else None


def is_duo_export(folder: str | Path) -> bool:
    p = Path(folder).expanduser()
    return p.is_dir() and (p / "model.safetensors").is_file() and read_export_config(p) is not None


def _not_export(folder: Path) -> ValueError:
    return ValueError(f"{str(folder)!r} is not a duo export (needs config.json with {CONFIG_KEY!r} and "
                      "model.safetensors); write one with: duo export RUN OUT")


def _build(conf: dict[str, Any], folder: Path):
    from ..config import build_config

    try:
        return build_config(dict(conf[CONFIG_KEY]))
    except ValueError as err:
        raise ValueError(f"{str(folder)!r}: config.json's {CONFIG_KEY} is invalid ({err})") from None


def load_export(folder: str | Path, *, tokenizer=None, device: str | torch.device = "cpu",
                algo: str | None = None):
    """A duo export folder as a ``duo.loading.LoadedModel`` (the weights it holds)."""
    from ..data import load_tokenizer
    from ..loading import build_loaded
    from ..utils.checksums import read_safetensors

    d = Path(folder).expanduser()
    conf = read_export_config(d)
    if conf is None or not (d / "model.safetensors").is_file():
        raise _not_export(d)
    cfg = _build(conf, d)
    if algo is not None and algo != cfg.algo:
        raise ValueError(f"{str(d)!r} holds a {cfg.algo} model, not {algo}; pass algo={cfg.algo}")
    saved = load_tokenizer(d)
    if tokenizer is not None and tokenizer.vocab_size != saved.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids but {str(d)!r} was trained with "
                         f"{saved.vocab_size}; use the tokenizer saved with the export")
    state = read_safetensors(d / "model.safetensors")  # verified against the checksum export stored
    metadata = {**(conf.get("duo_metadata") or {}), "source": "export"}
    loaded = build_loaded(cfg, tokenizer or saved, state, None, d, metadata,
                          model_vocab_size=int(conf.get("vocab_size") or 0) or None)
    loaded.backbone.to(device)
    return loaded


# --- the transformers half: Auto classes ---------------------------------------------

_CLASSES: dict[str, type] = {}


def _define_classes() -> dict[str, type]:
    from transformers import PretrainedConfig, PreTrainedModel
    from transformers.utils import ModelOutput

    from ..config import build_config
    from ..generation import generate_text, pick_sampler
    from ..loading import LoadedModel
    from ..methods import build_method
    from ..samplers import SamplingConfig
    from ..schedules import sigma_from_alpha

    module = __name__

    class DuoConfig(PretrainedConfig):
        """``config.json`` of a duo export; ``duo_config`` is the run's configuration."""

        model_type = "duo"

        def __init__(self, duo_config: dict | None = None, duo_metadata: dict | None = None,
                     algo: str = "duo", **kwargs):
            self.duo_config = duo_config or {}
            self.duo_metadata = duo_metadata or {}
            self.algo = algo
            super().__init__(**kwargs)

    class DuoMdlmConfig(DuoConfig):
        model_type = "mdlm"

    class DuoArConfig(DuoConfig):
        model_type = "ar"

    @dataclass
    class DuoOutput(ModelOutput):
        logits: torch.Tensor | None = None

    class DuoModel(PreTrainedModel):
        """The DiT (``self.backbone``) with its duo method; ``sample`` runs duo's samplers."""

        config_class = DuoConfig
        base_model_prefix = "backbone"
        main_input_name = "input_ids"
        _no_split_modules = ["DiTBlock"]

        def __init__(self, config: DuoConfig):
            super().__init__(config)
            if not config.duo_config:
                raise ValueError(f"config.json has no {CONFIG_KEY!r}: not a duo export; write one with "
                                 "duo export RUN OUT")
            self.run_config = build_config(dict(config.duo_config))
            vocab = int(getattr(config, "tokenizer_vocab_size", 0) or config.vocab_size)
            self.backbone, self.method = build_method(self.run_config, vocab,
                                                      model_vocab_size=int(config.vocab_size))
            self._tokenizer = None
            self.post_init()

        def _init_weights(self, module):  # the DiT initialises itself; the file holds every weight
            pass

        def forward(self, input_ids: torch.Tensor, sigma: torch.Tensor | None = None,
                    t: torch.Tensor | float | None = None, return_dict: bool = True, **_: Any):
            """Logits (B, L, K) of the DiT on ids (B, L); the time as ``sigma = -log alpha_t``
            or as ``t`` in [0, 1] (through the run's schedule). AR models take neither."""
            if t is not None and sigma is None and hasattr(self.method, "schedule"):
                t = torch.as_tensor(t, dtype=torch.float32, device=input_ids.device).expand(input_ids.shape[0])
                sigma = sigma_from_alpha(self.method.schedule.alpha(t))
            if self.run_config.algo != "ar" and sigma is None:
                sigma = torch.zeros(input_ids.shape[0], device=input_ids.device)
            logits = self.backbone(input_ids, sigma)
            return DuoOutput(logits=logits) if return_dict else (logits,)

        @property
        def tokenizer(self):
            if self._tokenizer is None:
                from ..data import load_tokenizer

                folder = Path(str(getattr(self.config, "_name_or_path", "") or self.config.name_or_path))
                if not (folder / "duo_tokenizer.json").is_file() and "/" in str(folder) and not folder.exists():
                    from .hub import resolve_hub

                    folder = resolve_hub(str(folder))
                self._tokenizer = load_tokenizer(folder)
            return self._tokenizer

        def as_loaded(self) -> LoadedModel:
            """This model as a ``LoadedModel`` (shares the weights), for duo's own API."""
            return LoadedModel(self.run_config, self.method, self.backbone, self.tokenizer,
                               Path(str(self.config.name_or_path)), dict(self.config.duo_metadata))

        @torch.no_grad()
        def sample(self, prompt: str | None = None, *, steps: int | None = None, sampler: str | None = None,
                   num_samples: int = 1, seq_len: int | None = None, seed: int = 0, protocol: str = "ours",
                   return_generation: bool = False, **options: Any):
            """Texts from duo's samplers (``sampler=None``: the export's default); ``options``
            are :class:`duo.samplers.SamplingConfig` fields (``top_p``, ``eta``, ``suffix``,
            ``length``, ...). Semi-autoregressive generation (``length`` > ``seq_len``) is
            ``duo.evaluation.sample(model.as_loaded(), SamplingConfig(...))``."""
            cfg = SamplingConfig(sampler=sampler, steps=steps, num_samples=num_samples, seq_len=seq_len,
                                 seed=seed, prefix=prompt, protocol=protocol, **options).validate()
            loaded = self.as_loaded()
            name, steps = pick_sampler(loaded, cfg.sampler, cfg.steps)
            length = cfg.seq_len or self.run_config.data.seq_len
            if length > self.run_config.model.max_seq_len:
                raise ValueError(f"seq_len={length} must be in [1, {self.run_config.model.max_seq_len}]")
            if cfg.length is not None and cfg.length > length:
                raise ValueError(f"length={cfg.length} > seq_len={length} is semi-autoregressive generation: "
                                 "use duo.evaluation.sample(model.as_loaded(), SamplingConfig(...))")
            length = cfg.length or length
            tok = loaded.tokenizer

            def ids(text: str | None) -> torch.Tensor | None:
                return torch.tensor(tok.encode(text), dtype=torch.long) if text else None

            gen = generate_text(self.method, tok, num_samples=num_samples, seq_len=length, seed=seed,
                                sampler=name, steps=steps, options=cfg.options(name), prefix=ids(prompt),
                                suffix=ids(cfg.suffix), device=self.device, protocol=protocol)
            return gen if return_generation else gen.texts

    class DuoMdlmModel(DuoModel):
        config_class = DuoMdlmConfig

    class DuoArModel(DuoModel):
        config_class = DuoArConfig

    classes = {c.__name__: c for c in (DuoConfig, DuoMdlmConfig, DuoArConfig, DuoModel, DuoMdlmModel,
                                       DuoArModel, DuoOutput)}
    for cls in classes.values():  # importable by name (pickling, save_pretrained's class names)
        cls.__module__, cls.__qualname__ = module, cls.__name__
    return classes


def register_auto_classes() -> dict[str, type]:
    """Define the classes and register them with ``AutoConfig`` / ``AutoModel`` (idempotent)."""
    if _CLASSES:
        return _CLASSES
    from transformers import AutoConfig, AutoModel

    classes = _define_classes()
    for model_type, config_name, model_name in MODEL_TYPES.values():
        AutoConfig.register(model_type, classes[config_name], exist_ok=True)
        AutoModel.register(classes[config_name], classes[model_name], exist_ok=True)
    _CLASSES.update(classes)
    return _CLASSES


def register_if_transformers_loaded() -> None:
    """Register at no cost: only when ``transformers``' model classes are already imported."""
    if "transformers.modeling_utils" in sys.modules and not _CLASSES:
        register_auto_classes()


def __getattr__(name: str):
    if name in _CLASS_NAMES or name == "DuoOutput":
        return register_auto_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
