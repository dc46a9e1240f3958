"""A heuristic screen for prompt injection in retrieved passages and questions.

Anyone who can get a document indexed (an upload, a scraped page, a forwarded e-mail) can write text
addressed to the answerer instead of the reader: "ignore previous instructions", a chat role marker, a
fake `<source>` block, or phishing ("send your password to …", "click this link"). A generative model may
obey it, and the extractive answerer quotes it verbatim with a valid citation. The rules below match
phrases that give orders to a model or ask the reader for credentials, not phrases that describe them, so
ordinary documents (including ones about passwords or prompts) pass. They are cheap and deterministic and
miss paraphrases: a screen in front of the prompt's own hygiene (quoted, escaped sources), not a guarantee.

What happens to a passage that trips a rule is `RAG_INJECTION_SCREEN`: `drop` (left out of the prompt),
`flag` (kept, marked as suspect) or `off`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCREEN_MODES = ("drop", "flag", "off")

_QUALIFIER = r"(?:all|any|previous|prior|above|earlier|preceding|foregoing|system|original|your|my)"
_ORDERS = r"(?:instructions?|prompts?|rules|directions|guidelines|directives|context)"
_CREDENTIAL = (
    r"(?:password|passcode|passphrase|credentials|login\s+details|pin|ssn|social\s+security\s+number"
    r"|card\s+(?:number|details)|bank\s+(?:details|account)|one-time\s+(?:code|password)|otp"
    r"|(?:2fa|mfa|security|verification)\s+code|(?:seed|recovery)\s+phrase)s?"
)
_MODEL = r"(?:ai|assistant|llm|language\s+model|chatbot|model|gpt|chatgpt|claude|copilot|agent)s?"


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern[str]
    # a match this pattern finds just before, in the same sentence, is advice: "never share your password"
    unless_after: re.Pattern[str] | None = None

    def trips(self, text: str) -> bool:
        return any(
            self.unless_after is None or not self.unless_after.search(text, max(0, match.start() - 80), match.start())
            for match in self.pattern.finditer(text)
        )


_NEGATED = re.compile(r"\b(?:never|not|don't|cannot|can't|won't|shouldn't|no\s+one)\b[^.!?\n]*$", re.I)

RULES = (
    Rule(
        "override_instructions",
        re.compile(
            rf"\b(?:ignore|disregard|forget|override|bypass)\s+(?:(?:the|these|those|of)\s+)?{_QUALIFIER}\b"
            rf"(?:\s+\w+){{0,3}}?\s+{_ORDERS}\b"
            r"|\b(?:ignore|disregard|forget)\s+(?:everything\s+|all\s+)?(?:(?:the|that)\s+)?(?:above|before|preceding)"
            r"(?=\s*(?:[.,;:!]|$|and\b))",
            re.I | re.M,
        ),
    ),
    Rule(
        "role_reassignment",
        re.compile(
            rf"\byou\s+are\s+(?:now|no\s+longer)\s+(?:(?:an?|the|my)\s+(?:\w+\s+){{0,2}}?{_MODEL}\b"
            r"|dan\b|in\s+(?:developer|god|jailbreak|unrestricted|dan)\s+mode\b|(?:bound|restricted)\s+by\b)"
            r"|\bfrom\s+now\s+on,?\s+(?:you|the\s+assistant)\s+(?:are|will|must|shall|should)\b"
            r"|\bpretend\s+(?:to\s+be|you\s+are)\s+(?:an?\s+)?(?:\w+\s+){0,2}?(?:ai|assistant|model|chatbot|unrestricted)\b"
            r"|\b(?:new|updated|real|actual|hidden)\s+(?:system\s+)?instructions?\s*:"
            r"|\b(?:developer|jailbreak)\s+mode\s+(?:enabled|activated|on)\b",
            re.I,
        ),
    ),
    Rule(
        "system_prompt",
        re.compile(
            r"\b(?:reveal|print|show|repeat|output|disclose|leak|display|ignore|override|change|forget)\s+(?:me\s+)?"
            r"(?:your|the)\s+(?:system|initial|original|hidden|secret)\s+(?:prompt|instructions|message)"
            r"|\b(?:reveal|print|repeat|disclose|leak)\s+(?:me\s+)?your\s+(?:\w+\s+)?(?:prompt|instructions)\b"
            r"|\b(?:new|updated|your)\s+system\s+prompt\b|\bsystem\s+prompt\s*:",
            re.I,
        ),
    ),
    Rule(
        "addresses_the_model",
        re.compile(
            rf"\b(?:note|message|instructions?|attention|important)\s+(?:to|for)\s+(?:the\s+|all\s+|any\s+)?{_MODEL}\b"
            rf"|\b{_MODEL}\s+(?:reading|processing|summari[sz]ing|answering\s+from)\s+this\b"
            r"|\b(?:do\s+not|don't|never)\s+(?:tell|inform|mention\s+(?:this\s+)?to|reveal\s+(?:this\s+)?to)\s+the\s+user\b"
            r"|\bwithout\s+(?:telling|informing|alerting)\s+the\s+user\b",
            re.I,
        ),
    ),
    Rule(
        "credential_request",
        re.compile(
            r"\b(?:send|e-?mail|forward|give|provide|share|reply\s+with|text|dm|post|disclose|tell)\s+"
            rf"(?:(?:us|me|them|it)\s+)?(?:your|their|the\s+user'?s)\s+(?:\w+\s+){{0,2}}?{_CREDENTIAL}\b",
            re.I,
        ),
        unless_after=_NEGATED,
    ),
    Rule(
        "click_link",
        re.compile(
            r"\bclick\s+(?:on\s+)?(?:this|the\s+(?:following|below))\s+link\b"
            r"|\bclick\s+(?:on\s+)?here\s+(?:now\s+)?to\s+(?:verify|confirm|validate|unlock|restore|reactivate|claim"
            r"|update\s+your|secure|log\s*in|sign\s*in|reset|avoid)",
            re.I,
        ),
    ),
    Rule(
        "role_marker",
        re.compile(
            r"<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id)\|>"
            r"|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>"
            r"|^\s*(?:#{1,3}\s*)?(?:system|developer)\s*(?:prompt|message)?\s*:\s*"
            r"(?=you\b|ignore\b|from\s+now\b|new\b|the\s+assistant\b|always\b|never\b|do\s+not\b)"
            r"|^\s*(?:human|assistant)\s*:",
            re.I | re.M,
        ),
    ),
    Rule(
        # a block the answerer could take for one of its numbered sources; a bare `<source>` mentioned in prose
        # and HTML's own <source src=…> (video, audio) are not
        "fake_source_tag",
        re.compile(
            r"<\s*(?:source|document|context|citation|search_result)\s+(?:id|index|number)\s*="
            r"|</\s*(?:source|sources|document|documents|search_results?)\s*>",
            re.I,
        ),
    ),
)


def find_injection(text: str) -> tuple[str, ...]:
    """The names of the rules `text` trips, in rule order (empty when it reads as ordinary text)."""
    return tuple(rule.name for rule in RULES if rule.trips(text))
