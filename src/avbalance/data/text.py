"""Text to token ids, at load time.

Two tokenizers: a word vocabulary fitted on the training texts (lower-cased words; id 0 is the
padding, id 1 an unknown word, then the words by decreasing count, ties in alphabetical order), or
a local Hugging Face tokenizer folder (``transformers``, the optional ``hf`` extra). A text always
gives at least one id (an unknown word when it has no word), at most ``max_tokens``.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch

from ..errors import ConfigError

PAD_ID = 0
UNKNOWN_ID = 1
WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The lower-cased words of ``text`` (runs of letters, digits and underscores)."""
    return WORD.findall(text.lower())


class WordVocabulary:
    """Word -> id for the words seen at least ``min_count`` times in ``texts``."""

    def __init__(self, texts: Iterable[str], min_count: int = 1):
        counts = Counter(word for text in texts for word in words(text))
        kept = sorted((word for word, count in counts.items() if count >= min_count), key=lambda w: (-counts[w], w))
        self.ids = {word: index for index, word in enumerate(kept, start=UNKNOWN_ID + 1)}

    def __len__(self) -> int:
        return len(self.ids) + UNKNOWN_ID + 1

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(word, UNKNOWN_ID) for word in words(text)]


class PretrainedTokenizer:
    """A Hugging Face tokenizer read from a local folder (no download)."""

    def __init__(self, path: str | Path):
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise ConfigError(
                f"option tokenizer={path}: reading a Hugging Face tokenizer needs transformers; "
                "install it with: pip install avbalance[hf]"
            ) from None
        # Texts are tokenised in the main process first (train lengths), then in loader workers:
        # the tokenizer's own thread pool must not be inherited across the fork.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if not Path(path).is_dir():
            raise ConfigError(f"option tokenizer: {path} is not a folder (a saved Hugging Face tokenizer)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(f"option tokenizer: cannot read a tokenizer from {path} ({reason})") from None

    def __len__(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])


def build_tokenizer(path: str | None, train_texts: Iterable[str], min_count: int = 1):
    """The tokenizer at ``path``, or a word vocabulary fitted on ``train_texts``."""
    if path is not None:
        return PretrainedTokenizer(path)
    return WordVocabulary(train_texts, min_count)


def token_ids(tokenizer, text: str, max_tokens: int | None = None) -> torch.Tensor:
    """The int64 ids of ``text``, cut to ``max_tokens``; never empty (lengths are at least 1)."""
    ids = tokenizer.encode(text)[:max_tokens] or [UNKNOWN_ID]
    return torch.tensor(ids, dtype=torch.int64)
