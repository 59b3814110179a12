"""Word-by-word comparison of what an approver is asked to release with what was last approved.

Both texts are an agent's to choose, and the page is built on the daemon's event loop, so the
comparison must cost little whatever they hold. Whitespace is not matched: each word carries the
spaces after it (shown as they are) and words are compared on their letters alone. The alignment
is a longest common subsequence of the words, computed a row at a time on bit masks held in
Python integers (Allison and Dix; Hyyrö), so its cost is bounded by the two lengths whatever the
words repeat; difflib's matcher, used before, grows cubically on repeated words (1,500 hidden
words a side held the loop for 9 s). Each side is compared on its first MAX_WORDS words; the rest
of the new version follows the comparison unmarked, so the approver still reads all of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import islice
from typing import Literal

# At most this many words of each side are aligned: about 30 ms for two sides of repeated
# words (measured), and more than any mail an approver reads word by word.
MAX_WORDS = 2000
_WORD = re.compile(r"\S+\s*")  # a word with the spaces after it


@dataclass(frozen=True)
class Piece:
    """A run of text the two versions share (`same`), or that only the old (`gone`) or new (`new`) has."""

    kind: Literal["same", "gone", "new"]
    text: str


@dataclass(frozen=True)
class WordDiff:
    pieces: list[Piece]
    cut: bool  # one side had more than MAX_WORDS words; the rest is not compared
    rest: str = ""  # the new version beyond its first MAX_WORDS words, shown unmarked


def word_diff(old: str, new: str) -> WordDiff:
    (before, old_rest), (after, rest) = _words(old), _words(new)
    cut = bool(old_rest or rest)
    pieces: list[Piece] = []
    for kind, a1, a2, b1, b2 in _runs([w.strip() for w in before], [w.strip() for w in after]):
        if kind == "same":
            pieces.append(Piece("same", "".join(after[b1:b2])))  # the spacing that would be sent
            continue
        if a2 > a1:
            pieces.append(Piece("gone", "".join(before[a1:a2])))
        if b2 > b1:
            pieces.append(Piece("new", "".join(after[b1:b2])))
    return WordDiff(pieces, cut, rest)


def _words(text: str) -> tuple[list[str], str]:
    """The first MAX_WORDS words of `text` (the spaces before the first go with it), and what follows."""
    start = len(text) - len(text.lstrip())
    words = [m.group() for m in islice(_WORD.finditer(text, start), MAX_WORDS)]
    end = start + sum(map(len, words))
    if words:
        words[0] = text[:start] + words[0]
    return words, text[end:]


def _runs(a: list[str], b: list[str]) -> list[tuple[str, int, int, int, int]]:
    """`a` and `b` as runs of words both have (`same`) and runs only one side or each has (`diff`)."""
    masks: dict[str, int] = {}
    for i, word in enumerate(a):
        masks[word] = masks.get(word, 0) | 1 << i
    full = (1 << len(a)) - 1
    # rows[j]: after b[:j], bit i is 0 where the common length of a[:i + 1], b[:j] is one more than
    # that of a[:i], b[:j]; so that length is the number of zeros among the low i bits.
    rows = [full]
    for word in b:
        v = rows[-1]
        u = v & masks.get(word, 0)
        rows.append(((v + u) | (v - u)) & full)

    def common(i: int, j: int) -> int:
        return i - (rows[j] & ((1 << i) - 1)).bit_count()

    steps: list[str] = []  # backwards: "=" both, "-" only a, "+" only b
    i, j = len(a), len(b)
    while i and j:
        if a[i - 1] == b[j - 1]:
            steps.append("=")
            i, j = i - 1, j - 1
        elif common(i - 1, j) == common(i, j):
            steps.append("-")
            i -= 1
        else:
            steps.append("+")
            j -= 1
    steps.extend("-" * i + "+" * j)
    runs: list[tuple[str, int, int, int, int]] = []
    i = j = 0
    for step in reversed(steps):
        same = step == "="
        kind = "same" if same else "diff"
        if not runs or runs[-1][0] != kind:
            runs.append((kind, i, i, j, j))
        _, a1, _, b1, _ = runs[-1]
        i, j = i + (step != "+"), j + (step != "-")
        runs[-1] = (kind, a1, i, b1, j)
    return runs
