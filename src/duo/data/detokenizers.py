"""Detokenizers that undo the whitespace tokenization of classic LM benchmarks.

LM1B, WikiText, PTB and LAMBADA ship pre-tokenized text ("do n't", "3 @.@ 5",
"( like this )"). A subword tokenizer trained on natural text sees such input as out of
distribution, so the diffusion-LM papers detokenize before tokenizing. These are small
regex passes written for that purpose. They only remove spacing and WikiText's @-@
markers, straighten quotes, and turn PTB's "<unk>" into "?"; words are never changed.
"""

from __future__ import annotations

import re
from typing import Callable

__all__ = ["DETOKENIZERS", "get_detokenizer", "lm1b", "lambada", "ptb", "scientific_papers", "wikitext"]

Detokenizer = Callable[[str], str]

# Clitics the treebank-style tokenizers split off the previous word.
_CLITIC = re.compile(r" (n't|'s|'re|'ve|'m|'ll|'d|'S|'RE|'VE|'M|'LL|'D|N'T)\b")
# Punctuation that attaches to the word before it.
_CLOSING = re.compile(r" ([.,;:!?%)\]}])")
# Brackets that attach to the word after them.
_OPENING = re.compile(r"([(\[{$#]) ")
# A double-quoted span written as `" words "`.
_QUOTED = re.compile(r'" ([^"]*?) "')


def _common(text: str) -> str:
    text = _CLITIC.sub(r"\1", text)
    text = _QUOTED.sub(r'"\1"', text)
    text = _CLOSING.sub(r"\1", text)
    return _OPENING.sub(r"\1", text)


def wikitext(text: str) -> str:
    """WikiText: ``3 @.@ 5`` -> ``3.5``, ``= = Title = =`` -> ``== Title ==``, punctuation."""
    text = text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    # Section markers come as spaced runs of '='; rejoin them so headings read naturally.
    text = re.sub(r"(?:= )+=", lambda m: m.group(0).replace(" ", ""), text)
    text = _common(text)
    # "the students ' books": a possessive apostrophe after a plural.
    return re.sub(r"s ' ", "s' ", text)


def ptb(text: str) -> str:
    """Penn Treebank: clitics, punctuation, escaped slashes, ``<unk>`` -> ``?``."""
    text = text.replace(" \\/ ", "/").replace("\\/", "/")
    text = _common(text)
    # After _common, so the "?" stands alone instead of gluing to the previous word.
    return text.replace("<unk>", "?")


def lm1b(text: str) -> str:
    """LM1B: clitics, punctuation, quotes, brackets and spaced-out URLs."""
    text = re.sub(r"(https?) : / / ", r"\1://", text)
    text = _common(text)
    # Single quotes used as quotation marks: "' word '" -> "'word'".
    return re.sub(r"' ([^']*?) '", r"'\1'", text)


def lambada(text: str) -> str:
    """LAMBADA: curly quotes to straight ones, collapse whitespace, strip."""
    text = text.replace("\u201c", '"').replace("\u201d", '"')
    text = text.replace("\u2018", "'").replace("\u2019", "'")
    return re.sub(r"[ \t]+", " ", text).strip()


def scientific_papers(text: str) -> str:
    """PubMed / arXiv articles: WikiText-style spacing plus LM1B-style punctuation."""
    return lm1b(wikitext(text))


DETOKENIZERS: dict[str, Detokenizer] = {
    "lm1b": lm1b,
    "wikitext": wikitext,
    "ptb": ptb,
    "lambada": lambada,
    "scientific_papers": scientific_papers,
}


def get_detokenizer(name: str) -> Detokenizer:
    """Return the detokenizer registered as ``name``."""
    if name not in DETOKENIZERS:
        raise ValueError(f"unknown detokenizer {name!r}; pick one of {sorted(DETOKENIZERS)}")
    return DETOKENIZERS[name]
