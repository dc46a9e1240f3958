"""PII and secret redaction, applied to document text before it is chunked, embedded or stored.

Candidates are found by pattern and confirmed by maintained validators: `phonenumbers` (Google's
libphonenumber) for phone numbers, `python-stdnum` checksums for payment cards (Luhn), IBANs and US
social security numbers, and `detect-secrets`' curated detectors for API keys, tokens and private keys.
Two things those detectors miss are added here: the body of a PEM private key (they match its BEGIN line)
and an unquoted AWS secret access key (40 characters with no fixed prefix, so found by the name before it).
E-mail addresses spelled out with words (`jane dot doe at example dot com`) are caught when the domain
ends in a common top-level domain.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers
from stdnum import iban, luhn
from stdnum.us import ssn

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_DOT = r"(?:\s+dot\s+|\s*[(\[](?:dot|\.)[)\]]\s*)"
_AT = r"(?:\s+at\s+|\s*[(\[](?:at|@)[)\]]\s*)"
SPELLED_EMAIL = re.compile(
    rf"\b(?P<local>[a-z0-9._%+-]+(?:{_DOT}[a-z0-9_%+-]+)*){_AT}[a-z0-9-]+(?:{_DOT}[a-z0-9-]+)*{_DOT}"
    r"(?:com|org|net|edu|gov|mil|int|io|co|info|biz|ai|dev|app|[a-z]{2})\b",
    re.IGNORECASE,
)
# "online at docs dot python dot org" names a website, not a mailbox
_NOT_MAILBOXES = frozenset(
    "me us you him her them it is are was were be been online available located hosted live found find look "
    "see visit go read here there site website page published docs documentation download".split()
)
# Space- or dash-separated card numbers may be grouped any way; dot-separated ones only as cards print
# (4-4-4-4[-3], 4-6-5, 4-6-4), so decimals like 3.14159265358979 are never candidates.
CARD = re.compile(
    r"\b(?:\d[ -]?){12,18}\d\b"
    r"|(?<![\d.])\d{4}\.(?:\d{4}\.\d{4}\.\d{4}(?:\.\d{3})?|\d{6}\.\d{4,5})(?!\.?\d)"
)
# The whole block, BEGIN to END; a block cut off before its END line (a chunked excerpt) to its body's end.
PEM_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?P<label>(?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----"
    r"(?:(?:(?!-----BEGIN ).)*?-----END (?P=label)-----|(?:\s*[A-Z][A-Za-z-]+: [^\n]*)*(?:\s*[A-Za-z0-9+/=]{16,})*)",
    re.S,
)
# detect-secrets finds an AWS secret access key only quoted after an `aws…key` name; it has no prefix of its
# own, so unquoted it is taken when a name for it comes shortly before.
AWS_SECRET_ACCESS_KEY = re.compile(
    r"(?i:aws_?secret(?:_?access)?(?:_?key)?|secret[ _-]?access[ _-]?key|aws[ _-]secret)"
    r"[^\n]{0,30}?(?<![A-Za-z0-9/+])(?P<key>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
)
US_SSN = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
# detect-secrets' "Public IP" detector is not a secret; the rest are credentials.
_NOT_SECRETS = {"Public IP (ipv4)"}


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str


@lru_cache(maxsize=1)
def _secret_patterns() -> tuple[re.Pattern[str], ...]:
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.plugins.base import RegexBasedDetector

    patterns = []
    for secret_type, detector in get_mapping_from_secret_type_to_class().items():
        if issubclass(detector, RegexBasedDetector) and secret_type not in _NOT_SECRETS:
            patterns.extend(detector().denylist)
    return tuple(patterns)


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def find_pii(text: str, phone_region: str = "US") -> Iterator[Span]:
    for match in EMAIL.finditer(text):
        yield Span(match.start(), match.end(), "email")
    for match in SPELLED_EMAIL.finditer(text):
        if match.group("local").lower() not in _NOT_MAILBOXES:
            yield Span(match.start(), match.end(), "email")
    for match in CARD.finditer(text):
        if 13 <= len(_digits(match.group())) <= 19 and luhn.is_valid(_digits(match.group())):
            yield Span(match.start(), match.end(), "card")
    for match in US_SSN.finditer(text):
        if ssn.is_valid(match.group()):
            yield Span(match.start(), match.end(), "national_id")
    for match in IBAN.finditer(text):
        if iban.is_valid(match.group()):
            yield Span(match.start(), match.end(), "iban")
    for match in phonenumbers.PhoneNumberMatcher(text, phone_region):
        yield Span(match.start, match.end, "phone")
    for pattern in _secret_patterns():
        for match in pattern.finditer(text):
            # detector patterns match a token's known prefix and length; redact the whole token
            end = match.end()
            while end < len(text) and (text[end].isalnum() or text[end] in "_-"):
                end += 1
            yield Span(match.start(), end, "secret")
    for match in PEM_PRIVATE_KEY.finditer(text):
        yield Span(match.start(), match.end(), "secret")
    for match in AWS_SECRET_ACCESS_KEY.finditer(text):
        if not match.group("key").isalpha():
            yield Span(match.start("key"), match.end("key"), "secret")


def _merge(spans: list[Span]) -> list[Span]:
    """Overlapping findings (a card number that also parses as a phone) are redacted once, the first kind wins."""
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if merged and span.start < merged[-1].end:
            last = merged[-1]
            merged[-1] = Span(last.start, max(last.end, span.end), last.kind)
        else:
            merged.append(span)
    return merged


def redact(text: str, phone_region: str = "US") -> tuple[str, dict[str, int]]:
    """The text with each finding replaced by `[REDACTED_<KIND>]`, and the count per kind."""
    spans = _merge(list(find_pii(text, phone_region)))
    pieces, cursor = [], 0
    for span in spans:
        pieces.append(text[cursor : span.start])
        pieces.append(f"[REDACTED_{span.kind.upper()}]")
        cursor = span.end
    pieces.append(text[cursor:])
    return "".join(pieces), dict(Counter(span.kind for span in spans))
