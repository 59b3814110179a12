"""Batch templates: a subject, text and html with `{{ name }}` placeholders, filled per recipient.

A batch's template is stored once (`P:tmpl:{batch}`, see state/keys.py) and each recipient's record
keeps only its values, so a queued recipient costs its values, not a copy of the body. Filling is
plain substitution: no template code runs, and a value goes into the HTML part escaped. A
placeholder without a value stays as it is, so the content boundary rejects that recipient as
`unrendered_template`. Admission fills each recipient once to check it; the store fills it again
whenever a record is read, for its sending, its `GET` and an approver's samples.
"""

from __future__ import annotations

import html as htmllib
import re
from collections.abc import Mapping
from dataclasses import dataclass

NAME = r"[A-Za-z_][A-Za-z0-9_.-]{0,63}"
PLACEHOLDER = re.compile(rf"(\{{\{{[ \t]*({NAME})[ \t]*\}}\}})")


class Template:
    """A subject or body split once at its placeholders, so filling it per recipient is a join."""

    def __init__(self, text: str, *, escape: bool = False) -> None:
        # split() with two groups: literal, whole placeholder, name, literal, ...
        pieces = PLACEHOLDER.split(text)
        self._literals = pieces[0::3]
        self._placeholders = pieces[1::3]
        self._names = pieces[2::3]
        self._escape = escape
        self._literal_bytes = sum(len(literal.encode("utf-8", "surrogatepass")) for literal in self._literals)
        # Per name: how many placeholders, and their bytes as written (what stays without a value).
        self._uses: dict[str, tuple[int, int]] = {}
        for placeholder, name in zip(self._placeholders, self._names, strict=True):
            count, written = self._uses.get(name, (0, 0))
            self._uses[name] = (count + 1, written + len(placeholder.encode("utf-8", "surrogatepass")))

    @property
    def placeholders(self) -> int:
        return len(self._names)

    def fill(self, values: Mapping[str, str]) -> str:
        """Each known name's value in place of its placeholder; unknown ones stay as they are."""
        out = [self._literals[0]]
        for placeholder, name, literal in zip(
            self._placeholders, self._names, self._literals[1:], strict=True
        ):
            out.append(self._value(values, name, placeholder))
            out.append(literal)
        return "".join(out)

    def size(self, values: Mapping[str, str]) -> int:
        """The UTF-8 bytes `fill(values)` would make, found without making it: a template of many
        placeholders filled with long values must be refused before it is built. Once a name, not
        once a placeholder, so that sizing a batch's recipients costs their values, not the template."""
        size = self._literal_bytes
        for name, (count, written) in self._uses.items():
            value = values.get(name)
            if value is None:
                size += written
            else:
                filled = htmllib.escape(value) if self._escape else value
                size += count * len(filled.encode("utf-8", "surrogatepass"))
        return size

    def _value(self, values: Mapping[str, str], name: str, placeholder: str) -> str:
        value = values.get(name)
        if value is None:
            return placeholder
        return htmllib.escape(value) if self._escape else value


@dataclass(frozen=True)
class Filled:
    """What one recipient gets: the template with its values filled in."""

    subject: str
    text: str
    html: str


class BatchTemplate:
    """A batch's subject, text and html, each split once; `""` for a part the batch does not have."""

    def __init__(self, subject: str, text: str, html: str) -> None:
        self._subject = Template(subject)
        self._text = Template(text)
        self._html = Template(html, escape=True)

    def fill(self, values: Mapping[str, str]) -> Filled:
        return Filled(self._subject.fill(values), self._text.fill(values), self._html.fill(values))

    def body_sizes(self, values: Mapping[str, str]) -> tuple[int, int]:
        """The UTF-8 bytes of the text and the html once filled, without filling them."""
        return self._text.size(values), self._html.size(values)

    @property
    def placeholders(self) -> int:
        """Placeholders in the subject, text and html: each is a step of filling every recipient."""
        return self._subject.placeholders + self._text.placeholders + self._html.placeholders
