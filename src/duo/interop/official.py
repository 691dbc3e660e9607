"""Load the official research code's artifacts as a :class:`duo.checkpoints.LoadedModel`.

Two layouts:

- a Lightning ``.ckpt`` written by the official trainer (branches ``main`` and ``ch-1``):
  ``state_dict`` with the DiT under ``backbone.``, ``ema = {decay, num_updates,
  shadow_params}`` whose shadow list follows the backbone's trainable parameters in
  registration order, and ``hyper_parameters = {config: <Hydra DictConfig>, tokenizer:
  <HF tokenizer>}``; read with :mod:`.restricted_unpickle`;
- a Hugging Face folder: ``config.json`` (``model_type``, ``hidden_dim``, ``cond_dim``,
  ``n_blocks``, ``n_heads``, ``model_length``, ...) and ``model.safetensors`` (keys with
  or without ``backbone.``).

The architecture, method, length and noise schedule come from the artifact (its config,
checked against the weights' shapes), never from a preset.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..loading import ema_counters
from ..models import strip_prefix
from .restricted_unpickle import load_restricted, to_plain
from .tokenizer_state import tokenizer_from_record

__all__ = ["OfficialSpec", "load_official", "looks_official", "is_hf_folder", "read_official"]

# The official code's algo.name -> this library's method.
ALGO_NAMES = {"duo": "duo", "duo_base": "duo", "distillation": "duo", "ot-finetune": "duo",
              "mdlm": "mdlm", "ar": "ar", "sedd": "sedd"}
NOT_YET = {"d3pm"}
# config.json model_type -> method.
HF_MODEL_TYPES = {"duo": "duo", "udlm": "duo", "mdlm": "mdlm", "ar": "ar"}
SCHEDULE_NAMES = {"log-linear": "loglinear", "loglinear": "loglinear", "cosine": "cosine"}
OFFICIAL_EPS = 1e-3  # ch-1's LogLinear hard-codes it; main's default; MDLM's LogLinearNoise


@dataclass
class OfficialSpec:
    """What an artifact says about itself."""

    algo: str  # duo / mdlm / ar
    official_algo: str  # the name in the artifact (duo_base, distillation, mdlm, ...)
    layout: str  # main / ch-1 / mdlm / hf
    vocab_size: int
    hidden_size: int
    cond_dim: int
    n_heads: int
    n_blocks: int
    length: int
    dropout: float
    mlp_ratio: int
    schedule: str
    eps: float
    time_conditioning: bool
    tokenizer_name: str | None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _require(mapping: dict, key: str, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping or mapping[key] is None:
        raise ValueError(f"{where} has no {key!r}; not a Duo/MDLM artifact this loader knows")
    return mapping[key]


# --- weights -------------------------------------------------------------------------

@dataclass
class _Shapes:
    vocab_size: int
    hidden_size: int
    cond_dim: int | None
    n_blocks: int
    mlp_ratio: int
    causal: bool


def _shapes(weights: dict[str, torch.Tensor], where: str) -> _Shapes:
    emb = weights.get("vocab_embed.embedding")
    if emb is None or emb.ndim != 2:
        raise ValueError(f"{where} has no vocab_embed.embedding: not a Duo/MDLM DiT checkpoint")
    vocab, dim = map(int, emb.shape)
    blocks = {int(m.group(1)) for k in weights if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not blocks:
        raise ValueError(f"{where} has no blocks.*: not a Duo/MDLM DiT checkpoint")
    sigma = weights.get("sigma_map.mlp.0.weight")
    mlp = weights.get("blocks.0.mlp.0.weight")
    ratio = int(mlp.shape[0]) // dim if mlp is not None else 4
    causal = sigma is None and "blocks.0.adaLN_modulation.weight" not in weights
    return _Shapes(vocab, dim, int(sigma.shape[0]) if sigma is not None else None, max(blocks) + 1, ratio, causal)


def _check_against(config_value: Any, weight_value: int | None, name: str, where: str) -> None:
    if config_value is not None and weight_value is not None and int(config_value) != weight_value:
        raise ValueError(f"{where}: config says {name}={config_value} but the weights have {weight_value}; "
                         "the file is inconsistent")


# --- config layouts ------------------------------------------------------------------

def _spec_from_hydra(cfg: dict, shapes: _Shapes, where: str) -> OfficialSpec:
    """The Hydra config of the official code (``main`` / ``ch-1``) or MDLM's older one."""
    model = _require(cfg, "model", where)
    if isinstance(cfg.get("algo"), dict):
        official = str(_require(cfg["algo"], "name", f"{where} config.algo"))
        algo_cfg = cfg["algo"]
        noise = cfg.get("noise") or {}
        # ch-1's noise config has 'parameterization' and its algo flat curriculum keys;
        # ch-1's LogLinear ignores noise.eps (0 in its YAML) and uses 1e-3.
        ch1 = "parameterization" in noise or "curriculum_start" in algo_cfg
        layout = "ch-1" if ch1 else "main"
        schedule_name = str(noise.get("type", "log-linear"))
        eps = OFFICIAL_EPS if ch1 else float(noise.get("eps", OFFICIAL_EPS))
        time_cond = bool(algo_cfg.get("time_conditioning", official != "mdlm"))
    else:  # kuleshov-group/mdlm: parameterization / backbone at the top level
        param = cfg.get("parameterization")
        official = {"subs": "mdlm", "ar": "ar"}.get(str(param), str(param))
        layout = "mdlm"
        noise = cfg.get("noise") or {}
        schedule_name = str(noise.get("type", "loglinear"))
        eps = OFFICIAL_EPS
        time_cond = bool(cfg.get("time_conditioning", False))
    if official in NOT_YET:
        raise ValueError(f"{where} holds a {official} model, which duo cannot load yet (its official "
                         "form may put mass on the mask); load a duo, mdlm, sedd or ar checkpoint")
    if official not in ALGO_NAMES:
        raise ValueError(f"{where} has algo name {official!r}; known: {', '.join(sorted(ALGO_NAMES))}")
    if schedule_name not in SCHEDULE_NAMES:
        raise ValueError(f"{where} uses noise schedule {schedule_name!r}; duo knows "
                         f"{', '.join(sorted(SCHEDULE_NAMES))}")
    _check_against(model.get("hidden_size"), shapes.hidden_size, "model.hidden_size", where)
    _check_against(model.get("cond_dim"), shapes.cond_dim, "model.cond_dim", where)
    _check_against(model.get("n_blocks"), shapes.n_blocks, "model.n_blocks", where)
    data = cfg.get("data") or {}
    return OfficialSpec(
        algo=ALGO_NAMES[official], official_algo=official, layout=layout,
        vocab_size=shapes.vocab_size, hidden_size=shapes.hidden_size,
        cond_dim=int(shapes.cond_dim or model.get("cond_dim") or 128),
        n_heads=int(_require(model, "n_heads", f"{where} config.model")),
        n_blocks=shapes.n_blocks, length=int(_require(model, "length", f"{where} config.model")),
        dropout=float(model.get("dropout", 0.1)), mlp_ratio=shapes.mlp_ratio,
        schedule=SCHEDULE_NAMES[schedule_name], eps=eps, time_conditioning=time_cond,
        tokenizer_name=data.get("tokenizer_name_or_path"),
    )


def _spec_from_hf(conf: dict, shapes: _Shapes, where: str) -> OfficialSpec:
    """``config.json`` of the Hub repos (``s-sahoo/duo``, ``kuleshov-group/mdlm-owt``)."""
    if isinstance(conf.get("config"), dict) and "model" in conf["config"]:  # PyTorchModelHubMixin
        spec = _spec_from_hydra(conf["config"], shapes, where)
        spec.layout = "hf"
        return spec
    model_type = str(conf.get("model_type", "")).lower()
    if model_type not in HF_MODEL_TYPES:
        raise ValueError(f"{where} has model_type {model_type!r}; duo loads "
                         f"{', '.join(sorted(HF_MODEL_TYPES))}")
    algo = "ar" if conf.get("causal") or shapes.causal else HF_MODEL_TYPES[model_type]
    hidden = conf.get("hidden_dim", conf.get("hidden_size"))
    _check_against(hidden, shapes.hidden_size, "hidden_dim", where)
    _check_against(conf.get("cond_dim"), shapes.cond_dim, "cond_dim", where)
    _check_against(conf.get("n_blocks"), shapes.n_blocks, "n_blocks", where)
    _check_against(conf.get("vocab_size"), shapes.vocab_size, "vocab_size", where)
    length = conf.get("model_length", conf.get("length"))
    return OfficialSpec(
        algo=algo, official_algo=model_type, layout="hf", vocab_size=shapes.vocab_size,
        hidden_size=shapes.hidden_size, cond_dim=int(shapes.cond_dim or conf.get("cond_dim") or 128),
        n_heads=int(_require(conf, "n_heads", where)), n_blocks=shapes.n_blocks,
        length=int(length) if length is not None else int(_require(conf, "model_length", where)),
        dropout=float(conf.get("dropout", 0.1)), mlp_ratio=shapes.mlp_ratio,
        schedule="loglinear", eps=OFFICIAL_EPS,  # config.json carries no schedule: the papers'
        time_conditioning=bool(conf.get("time_conditioning", algo == "duo")), tokenizer_name=None,
    )


# --- reading -------------------------------------------------------------------------

def is_hf_folder(path: str | Path) -> bool:
    p = Path(path)
    return (p.is_dir() and (p / "config.json").is_file() and not (p / "config.yaml").is_file()
            and any((p / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")))


def looks_official(ckpt: Any) -> bool:
    """A loaded ``.ckpt`` dict in the official layout (no ``duo`` entry, ``backbone.`` keys)."""
    if not isinstance(ckpt, dict) or "duo" in ckpt:
        return False
    state = ckpt.get("state_dict")
    return isinstance(state, dict) and any(str(k).startswith("backbone.") for k in state)


@dataclass
class _Read:
    spec: OfficialSpec
    weights: dict[str, torch.Tensor]
    shadow: list[torch.Tensor] | None
    tokenizer_record: Any
    extra: dict[str, Any]
    tokenizer_dir: Path | None = None  # an HF folder's own tokenizer files


def _read_ckpt(p: Path) -> _Read:
    where = f"checkpoint {str(p)!r}"
    ckpt = load_restricted(p)
    if not looks_official(ckpt):
        raise ValueError(f"{where} has neither duo metadata nor official backbone.* weights; "
                         "pass a duo run, an official .ckpt or a Hugging Face folder")
    weights = strip_prefix(ckpt["state_dict"])
    shapes = _shapes(weights, where)
    hp = ckpt.get("hyper_parameters")
    hp_plain = to_plain(hp) if hp is not None else {}
    cfg = hp_plain.get("config") if isinstance(hp_plain, dict) else None
    if not isinstance(cfg, dict):
        raise ValueError(f"{where} has no hyper_parameters.config, so its architecture is unknown; "
                         "use duo.checkpoints.load_published(path, algo=..., model=..., tokenizer=...)")
    spec = _spec_from_hydra(cfg, shapes, where)
    ema = ckpt.get("ema")
    shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
    tok_record = hp_plain.get("tokenizer") if isinstance(hp_plain, dict) else None
    extra = {k: ckpt[k] for k in ("epoch", "global_step") if isinstance(ckpt.get(k), int)}
    if ema_counters(ema) is not None:
        extra["ema"] = ema_counters(ema)
    return _Read(spec, weights, list(shadow) if shadow is not None else None, tok_record, extra)


def _read_hf(d: Path) -> _Read:
    where = f"folder {str(d)!r}"
    try:
        conf = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{where}: config.json is unreadable ({type(err).__name__}); download it again") from None
    if (d / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(d / "model.safetensors"))
    else:
        try:
            state = torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"{where}: pytorch_model.bin is corrupt ({type(err).__name__})") from None
    weights = strip_prefix(state)
    spec = _spec_from_hf(conf, _shapes(weights, where), where)
    has_tok = any((d / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))
    return _Read(spec, weights, None, None, {}, d if has_tok else None)


def read_official(path: str | Path) -> _Read:
    p = Path(path).expanduser()
    if p.is_dir():
        if not is_hf_folder(p):
            raise FileNotFoundError(f"{str(p)!r} is not a Hugging Face model folder "
                                    "(config.json with model.safetensors or pytorch_model.bin)")
        return _read_hf(p)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    return _read_ckpt(p)


# --- building ------------------------------------------------------------------------

def _build_config(spec: OfficialSpec):
    from ..config import build_config
    algo: dict[str, Any] = {"_name": spec.algo}
    if spec.algo in ("duo", "mdlm", "sedd"):
        algo.update(schedule=spec.schedule, eps=spec.eps)
    if spec.algo == "mdlm":
        algo["time_conditioning"] = spec.time_conditioning
    model = {"_name": "small", "vocab_size": spec.vocab_size, "hidden_size": spec.hidden_size,
             "cond_dim": spec.cond_dim, "n_heads": spec.n_heads, "n_blocks": spec.n_blocks,
             "max_seq_len": spec.length, "dropout": spec.dropout, "mlp_ratio": spec.mlp_ratio}
    return build_config({"algo": algo, "model": model, "data": {"seq_len": spec.length}})


def _gpt2_with_pad(where: str):
    """GPT-2 plus the ``[PAD]`` id the official code adds (K = 50,258)."""
    from ..data import HFTokenizer, get_tokenizer

    try:
        base = get_tokenizer("gpt2")
    except (ValueError, OSError) as err:
        raise ValueError(f"{where} carries no tokenizer and GPT-2's is not available offline "
                         f"({_one_line(err)[:100]}); pass tokenizer=<a saved duo tokenizer or its directory>") from None
    hf = base._tok
    if hf.pad_token is None:
        hf.add_special_tokens({"pad_token": "[PAD]"})
    return HFTokenizer(hf, "gpt2")


def _pick_tokenizer(read: _Read, tokenizer: Any, where: str):
    if tokenizer is not None:
        if isinstance(tokenizer, (str, Path)):
            from ..data import get_tokenizer

            return get_tokenizer(str(tokenizer)), "given"
        return tokenizer, "given"
    if read.tokenizer_dir is not None:
        from ..data import HFTokenizer

        return HFTokenizer.from_pretrained(str(read.tokenizer_dir)), "artifact"
    tok = tokenizer_from_record(read.tokenizer_record, read.spec.tokenizer_name)
    if tok is not None:
        return tok, "artifact"
    if read.spec.tokenizer_name not in (None, "gpt2"):
        raise ValueError(f"{where} was trained with tokenizer {read.spec.tokenizer_name!r} and carries none "
                         "duo can read; pass tokenizer=<that tokenizer's name or directory>")
    return _gpt2_with_pad(where), "gpt2"


def _apply_ema(backbone: torch.nn.Module, names: list[str], shadow: list[torch.Tensor], where: str) -> None:
    params = dict(backbone.named_parameters())
    if len(shadow) != len(names):
        raise ValueError(f"{where}: EMA has {len(shadow)} tensors for {len(names)} parameters; "
                         "load with weights=raw")
    with torch.no_grad():
        for name, s in zip(names, shadow):
            p = params[name]
            if tuple(s.shape) != tuple(p.shape):
                raise ValueError(f"{where}: EMA tensor for {name} has shape {tuple(s.shape)}, expected "
                                 f"{tuple(p.shape)}; load with weights=raw")
            p.copy_(s.to(p.dtype))


def load_official(path: str | Path, algo: str | None = None, weights: str = "ema", tokenizer: Any = None,
                  device: str | torch.device = "cpu"):
    """An official ``.ckpt`` or Hugging Face folder as a ``duo.checkpoints.LoadedModel``.

    ``algo`` (optional) must match the artifact's method; ``weights`` picks the EMA
    shadow parameters (``"ema"``, when the file has them) or the trained ones
    (``"raw"``); ``tokenizer`` (a duo tokenizer, name or directory) replaces the
    artifact's (GPT-2 plus ``[PAD]`` when the artifact carries none).
    """
    from ..loading import build_loaded

    if weights not in ("ema", "raw"):
        raise ValueError(f"weights={weights!r} must be 'ema' or 'raw'")
    p = Path(path).expanduser()
    where = f"checkpoint {str(p)!r}"
    read = read_official(p)
    spec = read.spec
    if algo is not None and algo != spec.algo:
        raise ValueError(f"{where} holds a {spec.algo} model (official algo {spec.official_algo!r}), "
                         f"not {algo}; pass algo={spec.algo} or leave algo unset")
    tok, tok_source = _pick_tokenizer(read, tokenizer, where)
    if tok.vocab_size > spec.vocab_size:
        raise ValueError(f"tokenizer has {tok.vocab_size} ids but {where} embeds only {spec.vocab_size}; "
                         "pass the tokenizer the model was trained with")
    used = weights
    if weights == "ema" and read.shadow is None:
        used = "raw"
        if spec.layout != "hf":
            warnings.warn(f"{where} has no EMA entry; using its raw weights", stacklevel=2)
    metadata: dict[str, Any] = {"source": "official", "layout": spec.layout, "official_algo": spec.official_algo,
                                "weights": used, "tokenizer_source": tok_source, **read.extra,
                                "official_spec": asdict(spec)}
    if spec.algo == "ar":
        # The official AR never predicts the id it appended to the vocabulary (MATH.md 11).
        hf = getattr(tok, "_tok", None)
        mask = getattr(hf, "mask_token_id", None) if hf is not None else None
        metadata["masked_logit_ids"] = [int(mask) if mask is not None else spec.vocab_size - 1]
    cfg = _build_config(spec)
    loaded = build_loaded(cfg, tok, read.weights, None, p, metadata, use_ema=False,
                          model_vocab_size=spec.vocab_size)
    if used == "ema":
        param_names = set(dict(loaded.backbone.named_parameters()))
        order = [k for k in read.weights if k in param_names]  # the file keeps registration order
        _apply_ema(loaded.backbone, order, read.shadow, where)
    loaded.backbone.to(device)
    return loaded
