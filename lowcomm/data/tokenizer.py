"""Tokenizers: a pretrained HF one by name or path, or a byte-level BPE trained on the data."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lowcomm.atomic import write_atomically
from lowcomm.data.spec import one_line

END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_CANDIDATES = (END_OF_TEXT, "</s>", "<eos>")
BYTE_ALPHABET_SIZE = 256


@dataclass(frozen=True)
class TextTokenizer:
    """An HF ``tokenizers.Tokenizer`` and the id of the token that ends each document."""

    backend: Tokenizer
    end_of_text_id: int

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, documents: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.backend.encode_batch(documents, add_special_tokens=False)]


def tokenizer_file(path: Path) -> TextTokenizer:
    """A ``tokenizer.json``; its end-of-text token is the first of ``END_OF_TEXT_CANDIDATES`` it has."""
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for unreadable files
        raise ValueError(f"tokenizer: cannot load {path}: {one_line(error)}") from error
    ids = [backend.token_to_id(token) for token in END_OF_TEXT_CANDIDATES]
    found = [i for i in ids if i is not None]
    if not found:
        raise ValueError(f"tokenizer: {path} has no end-of-text token (one of {', '.join(END_OF_TEXT_CANDIDATES)})")
    return TextTokenizer(backend, found[0])


def pretrained_tokenizer(name_or_path: str) -> TextTokenizer:
    """A fast tokenizer from the HF hub (e.g. ``EleutherAI/gpt-neo-125m``) or a local folder, via
    ``transformers.AutoTokenizer``; documents end with its EOS token."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ValueError("tokenizer: hub names need the 'transformers' package (pip install 'lowcomm[hf]')") from None
    try:
        pretrained = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as error:  # the hub, the cache and the loaders raise many kinds
        raise ValueError(
            f"tokenizer: cannot load {name_or_path!r}: hub unreachable or no such tokenizer ({one_line(error)})"
        ) from error
    if not pretrained.is_fast or pretrained.eos_token_id is None:
        raise ValueError(f"tokenizer: {name_or_path!r} must be a fast tokenizer with an EOS token")
    return TextTokenizer(pretrained.backend_tokenizer, pretrained.eos_token_id)


def check_tokenizer_source(name_or_path: str) -> None:
    """Reject a local tokenizer that is not there: a ``.json`` file, or a folder named by an absolute
    path or one starting with ``./``, ``../`` or ``~``. Other names may be HF hub names, which
    cannot be checked offline."""
    path = Path(name_or_path).expanduser()
    if name_or_path.endswith(".json"):
        if not path.is_file():
            raise ValueError(f"tokenizer: no such file {name_or_path!r}")
    elif name_or_path.startswith(("/", "./", "../", "~")) and not path.is_dir():
        raise ValueError(f"tokenizer: no such folder {name_or_path!r}")


def load_tokenizer(name_or_path: str) -> TextTokenizer:
    """A ``tokenizer.json`` path, or else a hub name or local folder for ``AutoTokenizer``."""
    if name_or_path.endswith(".json"):
        return tokenizer_file(Path(name_or_path).expanduser())
    return pretrained_tokenizer(name_or_path)


def train_byte_level_bpe(documents: list[str], vocab_size: int) -> Tokenizer:
    """A GPT-2 style byte-level BPE (Radford et al., 2019) with ``END_OF_TEXT`` as its only special token."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer, length=len(documents))
    return tokenizer


def text_hash(documents: list[str]) -> str:
    digest = hashlib.sha256()
    for document in documents:
        digest.update(document.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def cached_byte_level_bpe(documents: list[str], vocab_size: int, cache_dir: Path) -> TextTokenizer:
    """The byte-level BPE for these documents, trained once and cached in ``cache_dir``.

    The file is named by a hash of the text and the vocabulary size and written atomically. Workers sharing ``cache_dir`` take a lock, so the first trains it and all load
    the same file.
    """
    if vocab_size <= BYTE_ALPHABET_SIZE:
        raise ValueError(f"vocab_size: must exceed the {BYTE_ALPHABET_SIZE} byte symbols, got {vocab_size}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"bpe-{vocab_size}-{text_hash(documents)}.json"
    with FileLock(path.with_suffix(".lock")):
        if not path.exists():
            tokenizer = train_byte_level_bpe(documents, vocab_size)
            write_atomically(path, lambda temporary: tokenizer.save(str(temporary)))
    return tokenizer_file(path)
