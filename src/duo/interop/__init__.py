"""Published artifacts: official Lightning checkpoints (read by a restricted unpickler),
Hugging Face folders and ``hf:<repo_id>`` Hub ids.

``load_official(path, algo=None, weights="ema", tokenizer=None)`` returns a
``duo.checkpoints.LoadedModel``; ``duo.checkpoints.load_checkpoint`` dispatches here for
files without duo metadata, and ``duo convert SRC OUT`` writes them as duo folders.
"""

from .hub import resolve_hub
from .official import OfficialSpec, is_hf_folder, load_official, looks_official
from .restricted_unpickle import InertRecord, is_torch_zip, load_restricted, to_plain
from .tokenizer_state import tokenizer_from_record

__all__ = [
    "InertRecord", "OfficialSpec", "is_hf_folder", "is_torch_zip", "load_official", "load_restricted",
    "looks_official", "resolve_hub", "to_plain", "tokenizer_from_record",
]
