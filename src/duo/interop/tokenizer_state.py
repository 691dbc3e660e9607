"""A tokenizer rebuilt from the inert record of a pickled Hugging Face tokenizer.

A fast tokenizer (``GPT2TokenizerFast``, ``PreTrainedTokenizerFast``, ...) pickles its
``tokenizers.Tokenizer`` backend as the backend's JSON text, beside the special-token
strings; that text is all :func:`tokenizer_from_record` needs. Slow BERT and GPT-2
tokenizers pickle their vocabulary (and merges), from which the equivalent fast backend
is assembled. Nothing of the original classes is imported or called.
"""

from __future__ import annotations

from typing import Any

from .restricted_unpickle import InertRecord

__all__ = ["special_tokens", "tokenizer_from_record"]

SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, InertRecord):  # AddedToken: content in its state or first argument
        content = value.state_dict().get("content")
        if content is None and value.args and isinstance(value.args[0], str):
            content = value.args[0]
        return content if isinstance(content, str) else None
    return None


def special_tokens(state: dict) -> dict[str, str]:
    """Special-token strings from a tokenizer's pickled ``__dict__`` (transformers 4 or 5)."""
    found: dict[str, str] = {}
    sources = [state.get("init_kwargs") or {}, state, state.get("_special_tokens_map") or {}]
    for source in sources:  # later sources win: they reflect tokens added after construction
        if not isinstance(source, dict):
            continue
        for key in SPECIAL_KEYS:
            for name in (key, "_" + key):
                text = _token_text(source.get(name))
                if text is not None:
                    found[key] = text
    return found


def _backend_json(state: dict) -> str | None:
    backend = state.get("_tokenizer")
    if isinstance(backend, InertRecord):
        raw = backend.state
        if isinstance(raw, (bytes, bytearray)):
            return bytes(raw).decode("utf-8")
        if isinstance(raw, str):
            return raw
    return None


def _wordpiece_json(state: dict, specials: dict[str, str]) -> str | None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = state.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        return None
    basic = state.get("basic_tokenizer")
    lower = True
    if isinstance(basic, InertRecord):
        lower = bool(basic.state_dict().get("do_lower_case", True))
    tok = Tokenizer(models.WordPiece({str(k): int(v) for k, v in vocab.items()},
                                     unk_token=specials.get("unk_token", "[UNK]")))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lower)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok.to_str()


def _byte_bpe_json(state: dict) -> str | None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    encoder, ranks = state.get("encoder"), state.get("bpe_ranks")
    if not isinstance(encoder, dict) or not isinstance(ranks, dict):
        return None
    merges = [tuple(pair) for pair, _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    tok = Tokenizer(models.BPE({str(k): int(v) for k, v in encoder.items()}, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(state.get("add_prefix_space", False)))
    tok.decoder = decoders.ByteLevel()
    return tok.to_str()


def tokenizer_from_record(record: Any, name: str | None = None):
    """A ``duo.data.HFTokenizer`` equivalent to the pickled tokenizer, or None if unknown.

    Added tokens (GPT-2's ``[PAD]``) are part of the backend JSON, so the vocabulary
    size matches the one the model was trained with.
    """
    if not isinstance(record, InertRecord):
        return None
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from ..data import HFTokenizer

    state = record.state_dict()
    specials = special_tokens(state)
    text = _backend_json(state) or _wordpiece_json(state, specials) or _byte_bpe_json(state)
    if text is None:
        return None
    backend = Tokenizer.from_str(text)
    for value in specials.values():  # slow tokenizers keep their specials outside the vocabulary
        if backend.token_to_id(value) is None:
            backend.add_special_tokens([value])
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False, **specials)
    label = name or state.get("name_or_path") or record.qualname
    return HFTokenizer(fast, str(label) if label else "published")

