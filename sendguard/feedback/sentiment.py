"""What a reply says: positive, neutral, negative or abusive, and whether it asks to be removed.

Only the replier's own words count, so the quoted original and the signature are cut first
(`reply_text`). VADER scores general English well but misreads sales idiom ("No thanks, we're all
set. Thanks for reaching out!" scores positive), so phrase rules come first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # type: ignore[import-untyped]

from sendguard.feedback.events import Sentiment

# VADER's usual cut-offs on its compound score, in [-1, 1].
POSITIVE_AT = 0.05
NEGATIVE_AT = -0.05
# VADER's time grows with the square of the text; a person's reply says what it means early on.
_SCORED_CHARS = 5_000
# Attribution lines are short; longer lines are text, and the cap keeps the patterns cheap.
_MAX_ATTRIBUTION = 400


def _phrases(*patterns: str) -> re.Pattern[str]:
    """Any of the phrases as whole words, case-insensitive; a space matches any run of whitespace."""
    body = "|".join(pattern.replace(" ", r"\s+") for pattern in patterns)
    return re.compile(rf"\b(?:{body})\b", re.IGNORECASE)


# Insults, profanity, threats, and accusations of spam or harassment aimed at the sender.
_ABUSIVE = _phrases(
    r"idiots?",
    r"morons?",
    r"dumbass",
    r"f(?:u|\*+)?c?k(?:ing|in|er|ers|ed|s)?",
    r"stfu",
    r"gtfo",
    r"wtf",
    r"(?:bull)?shit(?:ty)?",
    r"assholes?",
    r"bastards?",
    r"bitch(?:es)?",
    r"dickheads?",
    r"scam(?:s|mers?|my)?",
    r"spammers?",
    r"spamming",
    r"(?:this|it|that)(?:'s| is) (?:\w+ )?spam",
    r"(?:reported|flagged|marked) (?:this|it|you|your \w+) (?:as )?(?:spam|junk|phishing)",
    r"report(?:ed|ing)? you",
    r"harass(?:ed|es|ing|ment)?",
    r"go to hell",
    r"piss(?:ed)? off",
    r"screw you",
    r"sue you",
    r"legal action",
    r"cease and desist",
)

_UNSUBSCRIBE = _phrases(
    r"unsubscribe",
    r"unsub",
    r"remove (?:me|us|my (?:e-?mail|address|name|details))",
    r"take (?:me|us|my (?:e-?mail|address|name)) off",
    r"stop (?:e-?mailing|contacting|messaging|mailing|writing to|sending|spamming)",
    r"(?:do not|don't|dont|never) (?:e-?mail|contact|message|write to|mail) (?:me|us)",
    r"opt(?:ing)?(?:-| )?out",
    r"no more (?:e-?mails|messages|mail)",
    r"leave me alone",
)

# A refusal is bad news however politely it is put.
_REFUSAL = _phrases(
    r"not (?:\w+ )?interested",
    r"no,? thanks?",
    r"no thank you",
    r"thanks?,? but no",
    r"nope",
    r"not (?:a |the )?(?:good |right |great )?fit",
    r"not looking",
    r"(?:do not|don't|no need to) follow(?:-| )?up",
    r"went with (?:another|a different|someone else|a competitor)",
    r"(?:happy|satisfied) with (?:our|my|the) (?:current|existing)",
    r"(?:we|i)(?:'ll| will) pass",
    r"no budget",
    r"(?:do not|don't) have (?:the |a |any )?budget",
    r"not (?:for us|for me|relevant)",
)
_BARE_NO = re.compile(r"\s*no[\s.!]*", re.IGNORECASE)

# "Not now" is not a yes, however warmly it is put.
_DEFERRAL = _phrases(
    r"not (?:right )?now",
    r"not at (?:this|the) (?:time|moment)",
    r"timing (?:isn't|is not|'s not) right",
    r"bad timing",
    r"maybe (?:later|next (?:week|month|quarter|year))",
)

# Plain yeses that VADER scores as neutral ("Can you send pricing?").
_INTEREST = _phrases(
    r"sign (?:me|us) up",
    r"(?:send|share) (?:me |us |over )?(?:some |a few |your |the )?"
    r"(?:times|availability|pricing|a quote|a proposal)",
    r"(?:book|schedule|set up) (?:a |some )?(?:call|meeting|demo|time)",
    r"let's (?:talk|chat|connect|meet)",
    r"(?:i'm|i am|we're|we are) interested",
)

_ATTRIBUTION = re.compile(
    r"(?:on\s.+\swrote:|am\s.+\sschrieb.{0,40}:|le\s.+\sa\s+écrit\s?:|-{2,}\s*original message\s*-{2,})\s*",
    re.IGNORECASE,
)
_OUTLOOK_FROM = re.compile(r"\*?from:\*?\s", re.IGNORECASE)
_OUTLOOK_SENT = re.compile(r"\*?(?:sent|date):\*?\s", re.IGNORECASE)
_RULE = re.compile(r"_{8,}\s*")


@dataclass(frozen=True)
class Classification:
    """A reply's verdict; `score` is VADER's compound score, which the phrase rules may overrule."""

    sentiment: Sentiment
    unsubscribe: bool
    score: float


def classify(text: str) -> Classification:
    """Classify a reply by its own text (the quote and signature are cut here).

    The first rule that applies decides:
    1. abusive: insults, profanity, threats, spam or harassment accusations;
    2. negative: a refusal ("not interested", "no thanks", "went with another vendor", a bare "no");
    3. negative: compound <= -0.05;
    4. neutral: an unsubscribe request or a deferral ("not right now"), however politely put:
       asking to be removed is never good news, and the unsubscribe flag carries that signal;
    5. positive: compound >= 0.05, or a plain yes ("sign us up", "send me some times");
    6. neutral.
    """
    own = reply_text(text).replace("\u2019", "'")
    score = float(_analyzer().polarity_scores(own[:_SCORED_CHARS])["compound"])
    unsubscribe = _UNSUBSCRIBE.search(own) is not None
    if _ABUSIVE.search(own):
        sentiment = Sentiment.ABUSIVE
    elif _REFUSAL.search(own) or _BARE_NO.fullmatch(own) or score <= NEGATIVE_AT:
        sentiment = Sentiment.NEGATIVE
    elif unsubscribe or _DEFERRAL.search(own):
        sentiment = Sentiment.NEUTRAL
    elif score >= POSITIVE_AT or _INTEREST.search(own):
        sentiment = Sentiment.POSITIVE
    else:
        sentiment = Sentiment.NEUTRAL
    return Classification(sentiment=sentiment, unsubscribe=unsubscribe, score=score)


def reply_text(text: str) -> str:
    """The replier's own words: quoted lines, the quoted original and the signature cut away.

    Everything from an attribution ("On <date>, <name> wrote:", "-----Original Message-----", an
    Outlook "From:" followed by "Sent:") or a "-- " signature line onwards is cut. Text written
    below the quote (inline replies) goes with it: top-posting is the norm for business mail.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    own: list[str] = []
    for index, line in enumerate(lines):
        if line == "-- " or _starts_quote(lines, index):
            break
        if not line.lstrip().startswith(">"):
            own.append(line)
    while own and (not own[-1].strip() or _RULE.fullmatch(own[-1])):
        own.pop()
    return "\n".join(own).strip()


def _starts_quote(lines: list[str], index: int) -> bool:
    """Whether an attribution starts at lines[index]; mail clients wrap long ones onto two lines."""
    line = lines[index].strip()
    if not line or len(line) > _MAX_ATTRIBUTION:
        return False
    following = [nxt.strip() for nxt in lines[index + 1 : index + 3]]
    if _OUTLOOK_FROM.match(line):
        return any(_OUTLOOK_SENT.match(nxt) for nxt in following)
    if _ATTRIBUTION.fullmatch(line):
        return True
    joined = f"{line} {following[0]}" if following else line
    return len(joined) <= _MAX_ATTRIBUTION and _ATTRIBUTION.fullmatch(joined) is not None


@cache
def _analyzer() -> Any:
    """One analyzer per process: it reads its lexicon from the package's files when created."""
    return SentimentIntensityAnalyzer()
