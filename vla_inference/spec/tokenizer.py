"""Text tokenizers: the byte tokenizer of this project's policies and the files real pi0.5 checkpoints use.

``tokenize`` is the byte-level tokenizer: deterministic, file-free, identical on every backend.
Token ids: 0 = padding, 1 = beginning of text, 2 + b for each UTF-8 byte b. Text is lower-cased
and stripped first, so "Reach the RED block " and "reach the red block" are the same command.

``load_tokenizer_file`` reads a checkpoint's own tokenizer (pi0.5 uses PaliGemma's, a SentencePiece
model): an HF ``tokenizer.json`` through the ``tokenizers`` library or a SentencePiece
``tokenizer.model``. Both add ``<bos>``, truncate to ``max_len`` and pad on the right with the
padding id, as LeRobot's tokenizer step does (``padding="max_length"``, right, truncation). Nothing
is ever downloaded: a missing file is an error that names it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Protocol, Sequence, Tuple, Union

import numpy as np

PAD_ID = 0
BOS_ID = 1
BYTE_OFFSET = 2
VOCAB_SIZE = 256 + BYTE_OFFSET
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def normalize_text(text: str) -> str:
    return " ".join(text.lower().split())


def tokenize(text: str, max_len: int) -> Tuple[np.ndarray, np.ndarray]:
    """Return (tokens int64 [max_len], mask bool [max_len]); text beyond ``max_len - 1`` bytes is cut."""
    data = normalize_text(text).encode("utf-8")[: max_len - 1]
    tokens = np.full(max_len, PAD_ID, dtype=np.int64)
    tokens[0] = BOS_ID
    tokens[1 : 1 + len(data)] = np.frombuffer(data, dtype=np.uint8).astype(np.int64) + BYTE_OFFSET
    mask = np.zeros(max_len, dtype=bool)
    mask[: 1 + len(data)] = True
    return tokens, mask


class TextTokenizer(Protocol):
    """A tokenizer file: ``ids(text)`` with ``<bos>`` first, and the id that pads."""

    path: Path
    pad_id: int

    def ids(self, text: str) -> List[int]: ...


def pad_ids(ids: Sequence[int], max_len: int, pad_id: int) -> Tuple[np.ndarray, np.ndarray]:
    """Truncate to ``max_len`` and pad on the right: (tokens int64 [max_len], mask bool [max_len])."""
    kept = list(ids)[:max_len]
    tokens = np.full(max_len, pad_id, dtype=np.int64)
    tokens[: len(kept)] = kept
    mask = np.zeros(max_len, dtype=bool)
    mask[: len(kept)] = True
    return tokens, mask


class HfTokenizerFile:
    """An HF ``tokenizer.json`` (the ``tokenizers`` library applies its own normaliser, pre-tokeniser
    and the post-processor that adds ``<bos>``)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self.path = path
        self._tokenizer = Tokenizer.from_file(str(path))
        self.pad_id = self._special_id(("pad_token",), "<pad>")
        bos = self._special_id(("bos_token",), "<bos>")
        probe = self._tokenizer.encode("a").ids
        self._prepend_bos = bool(probe) and probe[0] != bos and bos >= 0
        self._bos = bos

    def _special_id(self, config_keys: Tuple[str, ...], default: str) -> int:
        """The id of a special token, named in ``tokenizer_config.json`` / ``special_tokens_map.json``
        beside the file when present, else by its usual name; -1 when the vocabulary lacks it."""
        name = default
        for sidecar in ("tokenizer_config.json", "special_tokens_map.json"):
            path = self.path.parent / sidecar
            if path.is_file():
                data = json.loads(path.read_text())
                for key in config_keys:
                    value = data.get(key)
                    if isinstance(value, dict):
                        value = value.get("content")
                    if isinstance(value, str):
                        name = value
        token_id = self._tokenizer.token_to_id(name)
        return PAD_ID if token_id is None and default == "<pad>" else (-1 if token_id is None else int(token_id))

    def ids(self, text: str) -> List[int]:
        ids = list(self._tokenizer.encode(text).ids)
        return [self._bos, *ids] if self._prepend_bos else ids


class SentencePieceFile:
    """A SentencePiece ``tokenizer.model`` (openpi's ``paligemma_tokenizer.model``), encoded with ``<bos>``."""

    def __init__(self, path: Path) -> None:
        import sentencepiece

        self.path = path
        self._processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
        pad = self._processor.pad_id()
        self.pad_id = pad if pad >= 0 else PAD_ID

    def ids(self, text: str) -> List[int]:
        return list(self._processor.encode(text, add_bos=True))


def load_tokenizer_file(path: Union[str, Path]) -> TextTokenizer:
    """``tokenizer.json`` or ``tokenizer.model`` (or a directory holding one); ``FileNotFoundError`` names it."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in TOKENIZER_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{path}: no {' or '.join(TOKENIZER_FILES)} in this directory")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokenizer file not found")
    if path.suffix == ".json":
        return HfTokenizerFile(path)
    if path.suffix == ".model":
        return SentencePieceFile(path)
    raise ValueError(f"{path}: expected a tokenizer.json (HF) or tokenizer.model (SentencePiece)")
