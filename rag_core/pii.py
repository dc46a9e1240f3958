"""PII and secret redaction, applied to document text before it is chunked, embedded or stored.

Candidates are found by pattern and confirmed by maintained validators: `phonenumbers` (Google's
libphonenumber) for phone numbers, `python-stdnum` checksums for payment cards (Luhn), IBANs and US
social security numbers, and `detect-secrets`' curated detectors for API keys, tokens and private keys.
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
CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
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
