"""The return date an out-of-office reply names, read conservatively.

Only a date right after a return phrase counts ("back on 3 December", "returning 2026-12-03",
"out of the office until December 3rd", "zurück am 3. Dezember", "bis zum 03.12.2026", "de retour
le 3 décembre", "jusqu'au 03/12"), and only one after today and at most 60 days ahead: a date
that is not clearly a return is no date, and the follow-up is then left as it was.
Day-first numeric dates (03.12., 03/12) are read only after a German or French phrase: in English
03/12 may be either.
"""

from __future__ import annotations

import re
from datetime import date, timedelta

MAX_AHEAD = timedelta(days=60)
_WINDOW = 40  # characters after a return phrase the date must start within

_MONTHS = {
    **dict.fromkeys(("january", "jan", "januar", "janvier", "jänner"), 1),
    **dict.fromkeys(("february", "feb", "februar", "février", "fevrier"), 2),
    **dict.fromkeys(("march", "mar", "märz", "maerz", "mars"), 3),
    **dict.fromkeys(("april", "apr", "avril"), 4),
    **dict.fromkeys(("may", "mai"), 5),
    **dict.fromkeys(("june", "jun", "juni", "juin"), 6),
    **dict.fromkeys(("july", "jul", "juli", "juillet"), 7),
    **dict.fromkeys(("august", "aug", "août", "aout"), 8),
    **dict.fromkeys(("september", "sep", "sept", "septembre"), 9),
    **dict.fromkeys(("october", "oct", "oktober", "octobre"), 10),
    **dict.fromkeys(("november", "nov", "novembre"), 11),
    **dict.fromkeys(("december", "dec", "dezember", "dez", "décembre", "decembre"), 12),
}
_MONTH = "(?P<month>" + "|".join(sorted(map(re.escape, _MONTHS), key=len, reverse=True)) + r")\.?"
_YEAR = r"(?:,?\s+(?P<year>20\d\d))?"
_DAY = r"(?P<day>[0-3]?\d)(?:st|nd|rd|th|er|\.)?"
_ISO = re.compile(r"(?P<year>20\d\d)-(?P<month>[01]\d)-(?P<day>[0-3]\d)\b")
_DAY_MONTH = re.compile(rf"\b{_DAY}\s+(?:de\s+)?{_MONTH}{_YEAR}\b", re.IGNORECASE)
_MONTH_DAY = re.compile(rf"\b{_MONTH}\s+{_DAY}{_YEAR}\b", re.IGNORECASE)
_NUMERIC = re.compile(r"\b(?P<day>[0-3]?\d)[./](?P<month>[01]?\d)\.?(?:[./](?P<year>20\d\d))?\b")

_ENGLISH = re.compile(
    r"\b(?:back|returning|return|in the office|available again)\s+(?:on|from|by)?|\b(?:until|till)\b",
    re.IGNORECASE,
)
_DAY_FIRST = re.compile(
    r"\b(?:zurück|wieder\s+(?:im\s+büro|erreichbar|da)|ab|bis(?:\s+(?:zum|einschließlich))?)\b"
    r"|\b(?:de\s+retour|retour|jusqu(?:'|\u2019)(?:au|à))",
    re.IGNORECASE,
)


def return_date(text: str, today: date) -> date | None:
    """The first return date in `text` after today and within MAX_AHEAD of it, or None."""
    found = [(m.start(), m.end(), False) for m in _ENGLISH.finditer(text)]
    found += [(m.start(), m.end(), True) for m in _DAY_FIRST.finditer(text)]
    for _, end, day_first in sorted(found):
        after = text[end : end + _WINDOW]
        patterns = [_ISO, _DAY_MONTH, _MONTH_DAY, *([_NUMERIC] if day_first else [])]
        matches = [m for pattern in patterns if (m := pattern.search(after))]
        for match in sorted(matches, key=lambda m: m.start()):
            when = _date(match, today)
            if when is not None and today < when <= today + MAX_AHEAD:
                return when
    return None


def _date(match: re.Match[str], today: date) -> date | None:
    """The match as a date; without a year, its next occurrence from today."""
    month_text = match.group("month").lower()
    month = int(month_text) if month_text.isdigit() else _MONTHS[month_text]
    day = int(match.group("day"))
    year = match.group("year")
    try:
        if year:
            return date(int(year), month, day)
        when = date(today.year, month, day)
        return when if when > today else date(today.year + 1, month, day)
    except ValueError:  # 31 February, month 13
        return None
