"""Content boundaries: leftover template placeholders and secrets in what an agent is about to send.

The checks run on every submission and on every recipient of a batch, so they are a few regexes
compiled once, with no nested repetitions and every repetition bounded or stopped by a delimiter it
cannot match: time is linear in the text, however hostile it is. A reason names the kind of secret
and where it was found, never the value: reasons go back to the agent and into the audit trail.

What counts as a placeholder (the near misses in tests/test_content.py show what does not):
- delimited identifiers: `{{first_name}}`, `{{ company | default: "you" }}`, `{% if x %}`,
  `{first_name}`, `${name}`, `{!Contact.FirstName}`, `*|FNAME|*`, `%FIRSTNAME%`, `<<first_name>>`,
  `[[name]]`. A single-brace identifier needs two characters and no spaces, so `{}`, `{x}`, JSON
  and CSS pass; `%name%` must stand alone, so `50% off` and URL escapes like `%C3%A9s%20` pass.
- square brackets around one to three capitalised words (`[FIRST NAME]`, `[Company Name]`,
  `[FirstName]`, `[first_name]`) whose last word is a recipient field (name, company, title, ...)
  or whose first is `Insert`. Subject tags (`[EXTERNAL]`, `[Action Required]`), editorial
  insertions (`[sic]`, `[the company]`), footnotes (`[1]`) and markdown links (`[text](url)`) pass.
- code is documentation, not template: fenced and inline markdown code and HTML `<pre>`/`<code>`
  are not checked for placeholders (they are checked for secrets).
"""

from __future__ import annotations

import html as htmllib
import re
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass

from sendguard.model import Reason

UNRENDERED_TEMPLATE = "unrendered_template"
SENSITIVE_CONTENT = "sensitive_content"

# Enough to find the template bug; the full list would only repeat it.
_SHOWN_PLACEHOLDERS = 3

_PLACEHOLDER = re.compile(
    r"""
      \{\{[ \t]{0,8}[A-Za-z_@#/^>&][^{}\n]{0,100}\}\}       # Handlebars, Jinja, Liquid, HubSpot
    | \{%-?[ \t]{0,8}[A-Za-z_][^{}%\n]{0,100}%\}            # Liquid and Jinja tags
    | \{![ \t]{0,8}[A-Za-z_$][\w.$:]{0,100}[ \t]{0,8}\}     # Salesforce merge fields
    | \$\{[ \t]{0,8}[A-Za-z_][\w.-]{0,64}[ \t]{0,8}\}       # shell and JavaScript
    | \{[A-Za-z_][\w.]{1,64}\}                              # Python format, Outreach, Apollo
    | \*\|[A-Za-z_][\w:-]{0,64}\|\*                         # Mailchimp merge tags
    | %(?<![\w%]%)[A-Za-z][A-Za-z_]{1,64}%(?!\w)            # Lemlist-style; not inside a URL
    | <<[ \t]{0,8}[A-Za-z_][\w.]{0,64}[ \t]{0,8}>>
    | \[\[[ \t]{0,8}[A-Za-z_][\w. ]{0,64}\]\]
    | \[(?P<words>[A-Za-z]{1,24}(?:['\u2019]s)?(?:[ _][A-Za-z]{1,24}(?:['\u2019]s)?){0,2})\](?![(\[])
    """,
    re.VERBOSE,
)

# The last word of a bracketed placeholder is the recipient field it stands for.
_FIELDS = frozenset(
    {
        "name",
        "fname",
        "lname",
        "firstname",
        "lastname",
        "fullname",
        "surname",
        "company",
        "companyname",
        "organization",
        "organisation",
        "employer",
        "title",
        "role",
        "city",
        "country",
        "industry",
        "email",
        "phone",
        "website",
        "recipient",
        "prospect",
    }
)
_CAMEL = re.compile(r"[A-Z]{2,}(?![a-z])|[A-Z]?[a-z]+|[A-Z]")
_NAME = re.compile(r"[\w.:-]+")

_HIDDEN_HTML = re.compile(r"<!--.*?(?:-->|\Z)|<(style|script)\b.*?(?:</\1\s{0,8}>|\Z)", re.I | re.S)
_CODE_HTML = re.compile(r"<(pre|code)\b.*?(?:</\1\s{0,8}>|\Z)", re.I | re.S)
# `<<name>>` is a placeholder, not a tag.
_TAG = re.compile(r"<(?<!<<)/?[A-Za-z!?][^<>]*>")
_ATTRIBUTE = re.compile(r"""=\s{0,8}(?:"([^"<>]*)"|'([^'<>]*)')""")
_CODE_TEXT = re.compile(r"```.*?(?:```|\Z)|`[^`\n]{1,200}`", re.S)


def check_content(subject: str, text: str | None, html: str | None) -> list[Reason]:
    """Reasons to refuse this content: one for leftover placeholders, one per kind of secret."""
    template_parts = [("subject", subject)]
    secret_parts = [("subject", subject)]
    if text:
        template_parts.append(("text body", _CODE_TEXT.sub(" ", text)))
        secret_parts.append(("text body", text))
    if html:
        visible, no_code, attributes = _html_text(html)
        template_parts.append(("HTML body", no_code + "\n" + attributes))
        secret_parts.append(("HTML body", visible + "\n" + attributes))
    reasons: list[Reason] = []
    placeholders = _placeholders(template_parts)
    if placeholders:
        reasons.append(Reason(UNRENDERED_TEMPLATE, placeholders))
    found: dict[str, str] = {}
    for where, part in secret_parts:
        for kind in _secret_kinds(part, found):
            found[kind] = where
    reasons.extend(Reason(SENSITIVE_CONTENT, f"{where} contains {kind}") for kind, where in found.items())
    return reasons


def _html_text(html: str) -> tuple[str, str, str]:
    """What a reader sees, the same without code blocks, and the attribute values (links, alt text).

    A crude regex pass rather than a parser: it only has to find placeholders and secrets, and it
    must stay linear on malformed input.
    """
    body = _HIDDEN_HTML.sub(" ", html)
    visible = htmllib.unescape(_TAG.sub(" ", body))
    no_code = visible
    if _CODE_HTML.search(body):
        body = _CODE_HTML.sub(" ", body)
        no_code = htmllib.unescape(_TAG.sub(" ", body))
    # Outside code only, where `x = "{name}"` is an example. Inline images are base64 noise in
    # which a key pattern can turn up by chance.
    values = (double or single for double, single in _ATTRIBUTE.findall(body))
    attributes = htmllib.unescape("\n".join(v for v in values if not v.startswith("data:")))
    return visible, no_code, attributes


def _placeholders(parts: list[tuple[str, str]]) -> str:
    """A sentence naming the first few placeholders and where they are, or "" for none."""
    shown: list[tuple[str, list[str]]] = []
    count = 0
    for where, part in parts:
        seen: set[str] = set()
        labels: list[str] = []
        for match in _PLACEHOLDER.finditer(part):
            words = match.group("words")
            if words is not None and not _names_a_field(words):
                continue
            placeholder = match.group()
            if placeholder in seen:
                continue
            seen.add(placeholder)
            count += 1
            if count > _SHOWN_PLACEHOLDERS:
                break
            # A secret inside a placeholder must not reach the reason either: `${…}`.
            secret = next(_secret_kinds(placeholder), None)
            labels.append(_NAME.sub("…", placeholder) if secret else placeholder)
        if labels:
            shown.append((where, labels))
        if count > _SHOWN_PLACEHOLDERS:
            break
    sentences = [
        f"{where} contains the placeholder{'s' if len(found) > 1 else ''} {', '.join(found)}"
        for where, found in shown
    ]
    more = " (and more)" if count > _SHOWN_PLACEHOLDERS else ""
    return "; ".join(sentences) + more if sentences else ""


def _names_a_field(words: str) -> bool:
    """`[First Name]`, `[COMPANY]`, `[first_name]`, `[Insert Link]`; not `[sic]` or `[EXTERNAL]`."""
    separated = words.replace("_", " ").split()
    # Editorial insertions are lower case; snake_case is a template variable whatever its case.
    if "_" not in words and not all(word[0].isupper() for word in separated):
        return False
    parts = _CAMEL.findall(words)
    return parts[-1].lower() in _FIELDS or parts[0].lower() == "insert"


def _secret_kinds(text: str, known: Container[str] = ()) -> Iterator[str]:
    """The kinds of secret in the text, skipping those already known."""
    if _CARD_KIND not in known and _has_card(text):
        yield _CARD_KIND
    folded = text.lower()
    for secret in _SECRETS:
        if secret.kind in known or (secret.needles and not any(n in folded for n in secret.needles)):
            continue
        if secret.valid is None:
            found = secret.pattern.search(text) is not None
        else:
            found = any(secret.valid(match) for match in secret.pattern.finditer(text))
        if found:
            yield secret.kind


@dataclass(frozen=True)
class _Secret:
    """A kind of secret, how to find it, and how to tell it from a look-alike.

    A pattern starts with a literal so that the regex engine can skip ahead to it; a leading word
    boundary would make it try every position, so the boundary is a look-behind after the literal.
    A case-insensitive pattern cannot start that way; it is searched only when the lower-cased text
    holds one of its needles.
    """

    kind: str
    needles: tuple[str, ...]
    pattern: re.Pattern[str]
    valid: Callable[[re.Match[str]], bool] | None = None


_CARD_KIND = "a payment card number"
# Every digit becomes 0 so that the card pattern can start with the literal 0000: the regex engine
# skips ahead to a literal many times faster than it tests each character against [0-9].
_ZERO_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_CARD = re.compile(
    rb"""
    0000(?<!00000)                                        # the start of a run of digits
    (?:
        0{9,15}
      | (?<!0000[ -]0000)(?P<sep>[ -])                    # groups, not inside a longer grouping
        (?:0000(?P=sep)0000(?P=sep)0000(?:(?P=sep)000)?   # 4-4-4-4, 4-4-4-4-3
          | 000000(?P=sep)00000?)                         # 4-6-4, 4-6-5
        (?!(?P=sep)0000)
    )
    (?!0)
    """,
    re.VERBOSE,
)


# (first digits from, to, lengths): the issuer ranges of the major networks. A Luhn-valid number
# outside them (an order, tracking or ISBN number) is not a card.
_ISSUERS: tuple[tuple[str, str, range], ...] = (
    ("4", "4", range(13, 20)),  # Visa
    ("51", "55", range(16, 17)),  # Mastercard
    ("2221", "2720", range(16, 17)),  # Mastercard
    ("34", "34", range(15, 16)),  # American Express
    ("37", "37", range(15, 16)),  # American Express
    ("6011", "6011", range(16, 20)),  # Discover
    ("644", "649", range(16, 20)),  # Discover
    ("65", "65", range(16, 20)),  # Discover
    ("300", "305", range(14, 20)),  # Diners Club
    ("36", "36", range(14, 20)),  # Diners Club
    ("38", "39", range(16, 20)),  # Diners Club
    ("3528", "3589", range(16, 20)),  # JCB
    ("62", "62", range(16, 20)),  # UnionPay
    ("6304", "6304", range(16, 20)),  # Maestro
    ("6759", "6759", range(16, 20)),  # Maestro
    ("6761", "6763", range(16, 20)),  # Maestro
)


def _has_card(text: str) -> bool:
    """Whether the text holds a card number, found in a copy of the text with digits zeroed."""
    # One byte per character ("replace"), so offsets in the bytes are offsets in the text.
    zeroed = text.encode("ascii", "replace").translate(_ZERO_DIGITS)
    return any(_is_card(text[match.start() : match.end()]) for match in _CARD.finditer(zeroed))


def _is_card(number: str) -> bool:
    """In an issuer's range and Luhn-valid: a random 16-digit number passes Luhn one time in ten."""
    digits = number.replace(" ", "").replace("-", "")
    if not any(
        low <= digits[: len(low)] <= high and len(digits) in lengths for low, high, lengths in _ISSUERS
    ):
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _looks_random(match: re.Match[str]) -> bool:
    """Generated keys mix digits and both cases; a long hyphenated slug after `sk-` does not."""
    value = match.group()[3:]
    return any(c.isdigit() for c in value) and any(c.isupper() for c in value) and not value.isupper()


# A password value that is a mask, a placeholder, a path or a link shows nothing.
_NOT_A_PASSWORD = re.compile(r"[*•xX.\-_]+|[<\[{($%/~].*|https?:.*|www\..*|[A-Z]+(?:_[A-Z]+)*", re.S)
# A hyphen is ordinary English ("the password is case-sensitive").
_DIGIT_OR_SYMBOL = re.compile(r"[^A-Za-z-]")


def _is_password(match: re.Match[str]) -> bool:
    """A value after a password label: "password is too weak" and "Password: click below" give none.

    A value counts when it has a digit, a symbol or mixed case, or when it follows a colon or an
    equals sign and ends its line (`password: letmein`).
    """
    value = match.group("value").rstrip(".,;:!?)")
    if len(value) < 4 or _NOT_A_PASSWORD.fullmatch(value):
        return False
    if _DIGIT_OR_SYMBOL.search(value) or (not value[1:].islower() and not value.isupper()):
        return True
    return match.group("sep") is not None and match.group("eol") is not None


_SECRETS = (
    _Secret(
        "a private key block",
        (),
        re.compile(r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----"),
    ),
    _Secret("an AWS access key", (), re.compile(r"(?:AKIA|ASIA)(?<=\b[A-Z]{4})[A-Z0-9]{16}\b")),
    _Secret(
        "an AWS secret access key",
        ("aws_secret", "awssecret"),
        re.compile(
            r"(?i:\baws_?secret_?(?:access_?)?key)[\"']?\s{0,8}[:=]\s{0,8}[\"']?"
            r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"
        ),
    ),
    _Secret(
        "a GitHub token",
        (),
        # ghp_, gho_, ghs_, ghu_, ghr_ and github_pat_
        re.compile(r"g(?<=\bg)(?:h[pousr]_[A-Za-z0-9]{36}|ithub_pat_[A-Za-z0-9_]{22,255})"),
    ),
    _Secret("a Slack token", (), re.compile(r"xox(?<=\bxox)[baprs]-[A-Za-z0-9-]{10,250}")),
    _Secret("a Stripe secret key", (), re.compile(r"k_live_(?<=\b[rs]k_live_)[A-Za-z0-9]{20,247}")),
    _Secret("a Google API key", (), re.compile(r"AIza(?<=\bAIza)[0-9A-Za-z_-]{35}")),
    _Secret(
        "an API secret key (sk-...)", (), re.compile(r"sk-(?<=\bsk-)[A-Za-z0-9_-]{32,250}"), _looks_random
    ),
    _Secret("a sendguard API token", (), re.compile(r"sg_(?<=\bsg_)[0-9a-f]{12}_[A-Za-z0-9_-]{43}")),
    _Secret(
        "a password",
        ("password", "passwd", "passcode", "passphrase", "pwd"),
        re.compile(
            r"""
            # db_password and MyPassword too; `?pwd=` is the passcode in a meeting link, for the invitee
            [Pp](?:(?i:ass(?:word|wd|code|phrase))|(?<![?&][Pp])(?i:wd))\b["']?
            (?:(?P<sep>[^\S\n]{0,8}[:=])|[^\S\n]{1,3}(?i:is)\b:?)
            [^\S\n]{0,8}(?:\n[^\S\n]{0,8})?["'`]?                   # the value may be on the next line
            (?P<value>[^\s"'`<>]{4,128})
            (?:(?P<eol>)(?=[^\S\n]{0,8}(?:\n|\Z)))?
            """,
            re.VERBOSE,
        ),
        _is_password,
    ),
)
