"""Word-by-word comparison of what an approver is asked to release with what was last approved."""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Literal

# A long body is compared on its first words: the matcher's cost grows with the product of the two
# lengths, and an approver reads the start of a message, not its ten-thousandth word.
MAX_WORDS = 5000
_WORDS = re.compile(r"\s+|[^\s]+")


@dataclass(frozen=True)
class Piece:
    """A run of text the two versions share (`same`), or that only the old (`gone`) or new (`new`) has."""

    kind: Literal["same", "gone", "new"]
    text: str


@dataclass(frozen=True)
class WordDiff:
    pieces: list[Piece]
    cut: bool  # one side had more than MAX_WORDS words; the rest is not compared

    @property
    def changed(self) -> bool:
        return any(piece.kind != "same" for piece in self.pieces)


def word_diff(old: str, new: str) -> WordDiff:
    before, after = _WORDS.findall(old), _WORDS.findall(new)
    cut = max(len(before), len(after)) > 2 * MAX_WORDS  # words and the spaces between them
    before, after = before[: 2 * MAX_WORDS], after[: 2 * MAX_WORDS]
    pieces: list[Piece] = []
    for op, a1, a2, b1, b2 in SequenceMatcher(None, before, after, autojunk=False).get_opcodes():
        if op == "equal":
            pieces.append(Piece("same", "".join(before[a1:a2])))
            continue
        if a2 > a1:
            pieces.append(Piece("gone", "".join(before[a1:a2])))
        if b2 > b1:
            pieces.append(Piece("new", "".join(after[b1:b2])))
    return WordDiff(pieces, cut)
