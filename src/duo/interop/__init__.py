"""Published artifacts: official Lightning checkpoints (read by a restricted unpickler),
Hugging Face folders and ``hf:<repo_id>`` Hub ids.

``load_official(path, algo=None, weights="ema", tokenizer=None)`` returns a
``duo.checkpoints.LoadedModel``; ``duo.checkpoints.load_checkpoint`` dispatches here for
files without duo metadata, and ``duo convert SRC OUT`` writes them as duo folders.

``duo export RUN OUT`` folders (config.json with ``duo_config``, model.safetensors, the
tokenizer) load through :func:`load_export`; their ``transformers`` Auto classes
(``DuoConfig`` / ``DuoModel`` and the MDLM / AR variants, :mod:`.hf_model`) are
registered by ``register_auto_classes()`` or on first access to those names here, and
at import of this package when transformers' model classes are already imported (free
then; importing transformers otherwise costs seconds, which loading a model never pays).
"""

from . import hf_model
from .hf_model import is_duo_export, load_export, register_auto_classes
from .hub import resolve_hub
from .official import OfficialSpec, is_hf_folder, load_official, looks_official
from .restricted_unpickle import InertRecord, is_torch_zip, load_restricted, to_plain
from .tokenizer_state import tokenizer_from_record

__all__ = [
    "InertRecord", "OfficialSpec", "is_hf_folder", "is_torch_zip", "load_official", "load_restricted",
    "looks_official", "resolve_hub", "to_plain", "tokenizer_from_record",
    "is_duo_export", "load_export", "register_auto_classes",
]

hf_model.register_if_transformers_loaded()


def __getattr__(name: str):
    if name in hf_model._CLASS_NAMES:  # DuoConfig, DuoModel, ...: defined (transformers imported) on first use
        return getattr(hf_model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
