"""The data layer: corpora, tokenizers, packing, an on-disk cache, resumable loading.

Typical use::

    from duo.data import DataConfig, build_data
    bundle = build_data(DataConfig(corpus="builtin", seq_len=128))
    loader = bundle.train_loader(batch_size=32)
"""

from duo.data.build import DataBundle, build_data, check_fits_model, pack_split
from duo.data.cache import CacheEntry, default_cache_dir
from duo.data.config import DataConfig
from duo.data.catalog import CORPORA, corpus_names, get_corpus, register_corpus
from duo.data.corpora import Corpus, CorpusOptions
from duo.data.dataset import PackedDataset
from duo.data.detokenizers import DETOKENIZERS, get_detokenizer
from duo.data.hf import HF_CORPORA, HFCorpusSpec, load_hf_split
from duo.data.packing import PACKERS, PackedRows, PackResult, PackStats, pack
from duo.data.sampler import ResumableDataLoader, ResumableSampler, build_dataloader
from duo.data.tokenization import BPETokenizer, CharTokenizer, HFTokenizer, TextTokenizer, load_tokenizer
from duo.data.tokenizer_sources import TOKENIZER_SOURCES, get_tokenizer, train_bpe

__all__ = [
    "BPETokenizer",
    "CORPORA",
    "CacheEntry",
    "CharTokenizer",
    "Corpus",
    "CorpusOptions",
    "DETOKENIZERS",
    "DataBundle",
    "DataConfig",
    "HFCorpusSpec",
    "HFTokenizer",
    "HF_CORPORA",
    "PACKERS",
    "PackResult",
    "PackStats",
    "PackedDataset",
    "PackedRows",
    "ResumableDataLoader",
    "ResumableSampler",
    "TOKENIZER_SOURCES",
    "TextTokenizer",
    "build_data",
    "build_dataloader",
    "check_fits_model",
    "corpus_names",
    "default_cache_dir",
    "get_corpus",
    "get_detokenizer",
    "get_tokenizer",
    "load_hf_split",
    "load_tokenizer",
    "pack",
    "pack_split",
    "register_corpus",
    "train_bpe",
]
