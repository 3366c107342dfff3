"""Byte-level text tokenizer: deterministic, file-free, identical on every backend.

Token ids: 0 = padding, 1 = beginning of text, 2 + b for each UTF-8 byte b. Text is lower-cased
and stripped first, so "Reach the RED block " and "reach the red block" are the same command.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

PAD_ID = 0
BOS_ID = 1
BYTE_OFFSET = 2
VOCAB_SIZE = 256 + BYTE_OFFSET


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
