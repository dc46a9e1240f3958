"""Conversations: multi-turn chat over the index, with each user's history in the serving database.

A follow-up ("and what does it key on?") is condensed into a standalone query before retrieval, through the
answerer that answers it:
- a litellm model gets a condense prompt (the recent turns and the follow-up; it replies with one question);
- a model that runs here (`extractive/…`, `local-gguf/…`) gets a deterministic condensation: a follow-up that
  leans on the conversation (a pronoun such as "it" or "they", an opening "and"/"but"/"what about", or fewer
  than three content words) is prefixed with the content words of the previous standalone query that it does
  not already use. A question that stands on its own is kept as it is.
Either way the standalone query is stored with the turn, so the next follow-up builds on it.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from rag_core.answerers import LOCAL_PROVIDERS
from rag_core.answerers.extractive import WORD, content_terms, content_words, stem
from rag_core.generation import LLMConfig, complete
from rag_core.pii import redact
from rag_core.tables import create_tables

log = logging.getLogger(__name__)

metadata = sa.MetaData()
conversations = sa.Table(
    "rag_conversations",
    metadata,
    sa.Column("conversation_id", sa.String(36), primary_key=True),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("user_name", sa.String(256), nullable=False),
    sa.Column("title", sa.String(256), nullable=False, default=""),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_rag_conversations_owner", "tenant", "user_name"),
)
turns = sa.Table(
    "rag_conversation_turns",
    metadata,
    sa.Column("turn_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "conversation_id", sa.String(36), sa.ForeignKey("rag_conversations.conversation_id"), nullable=False, index=True
    ),
    sa.Column("question", sa.Text, nullable=False),
    sa.Column("standalone_query", sa.Text, nullable=False),
    sa.Column("query_id", sa.String(36), nullable=False),
    sa.Column("answer", sa.Text, nullable=False),  # the answer as served, JSON: text, citations, sources, …
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# Words that make a question lean on an earlier one: it cannot be searched on its own.
ANAPHORS = frozenset("it its it's they them their theirs this that these those he she his her there one".split())
OPENERS = ("and ", "but ", "also ", "what about", "how about", "then ", "so ")
MIN_CONTENT_WORDS = 3
HISTORY_TURNS = 3  # what a condense prompt shows of the conversation
CONDENSE_MAX_TOKENS = 96
CONDENSE_PROMPT = (
    "Rewrite the user's last question as one standalone search question, using the conversation only to "
    "resolve what it refers to. Reply with the question alone, no preamble."
)


@dataclass(frozen=True)
class Turn:
    question: str
    standalone_query: str
    query_id: str
    answer: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class Conversation:
    conversation_id: str
    tenant: str
    user: str
    title: str
    created_at: datetime
    updated_at: datetime
    turns: list[Turn]


def leans_on_history(question: str) -> bool:
    lowered = question.strip().lower()
    words = WORD.findall(lowered)
    return (
        any(word in ANAPHORS for word in words)
        or lowered.startswith(OPENERS)
        or len(content_words(question)) < MIN_CONTENT_WORDS
    )


def condense_offline(previous_query: str, follow_up: str) -> str:
    """The previous standalone query's content words the follow-up lacks, then the follow-up."""
    if not leans_on_history(follow_up):
        return follow_up
    present = set(content_terms(follow_up))
    carried: list[str] = []
    for word in content_words(previous_query):
        if stem(word) not in present and word not in carried:
            carried.append(word)
    return f"{' '.join(carried)}: {follow_up}" if carried else follow_up


def condense(history: Sequence[Turn], follow_up: str, llm: LLMConfig) -> str:
    """The follow-up as a standalone query (the first question is already one)."""
    if not history:
        return follow_up
    if llm.model.startswith(LOCAL_PROVIDERS):
        return condense_offline(history[-1].standalone_query, follow_up)
    messages = [{"role": "system", "content": CONDENSE_PROMPT}]
    for turn in history[-HISTORY_TURNS:]:
        messages += [
            {"role": "user", "content": turn.question},
            {"role": "assistant", "content": str(turn.answer.get("answer", ""))[:1000]},
        ]
    messages.append({"role": "user", "content": follow_up})
    try:
        response = complete(llm, messages, CONDENSE_MAX_TOKENS)
        condensed = (response.choices[0].message.content or "").strip()
    except Exception as error:  # the answer must not fail because the rewrite did: condense here instead
        log.warning("condensing a follow-up with %s failed (%s); condensing offline", llm.model, error)
        condensed = ""
    return " ".join(condensed.split()) or condense_offline(history[-1].standalone_query, follow_up)


# --------------------------------------------------------------------------- cited sentences

SENTENCE_CITED = re.compile(r"([^\[\]]+?)((?:\s*\[\d+\])+)")


def _loose(sentence: str) -> re.Pattern[str]:
    """`sentence` matched with any whitespace (or none) between its words: quotes are re-spaced on one line."""
    return re.compile(r"\s*".join(re.escape(word) for word in sentence.split()), re.IGNORECASE)


def _closest_sentence(sentence: str, text: str) -> tuple[int, int] | None:
    """The span of the sentence of `text` sharing the most content words with `sentence` (two at least)."""
    wanted = set(content_terms(sentence))
    best, span = 1, None
    for match in re.finditer(r"[^.!?\n]+[.!?]?", text):
        shared = len(wanted & set(content_terms(match.group(0))))
        if shared > best:
            best, span = shared, (match.start(), match.end())
    return span


def cited_spans(answer: str, source_texts: Sequence[str]) -> dict[int, list[tuple[int, int]]]:
    """{source number: character spans of its text} that the answer's sentences cite with `[n]`: the quoted
    sentence itself, or for a paraphrase the source sentence closest to it."""
    spans: dict[int, list[tuple[int, int]]] = {}
    for match in SENTENCE_CITED.finditer(answer):
        sentence = match.group(1).strip()
        for number in {int(n) for n in re.findall(r"\d+", match.group(2))}:
            if not sentence or not 1 <= number <= len(source_texts):
                continue
            text = source_texts[number - 1]
            found = _loose(sentence).search(text)
            span = (found.start(), found.end()) if found else _closest_sentence(sentence, text)
            if span and span not in spans.get(number, []):
                spans.setdefault(number, []).append(span)
    return spans


# --------------------------------------------------------------------------- storage


class ConversationNotFound(LookupError):
    """No such conversation for this tenant and user."""


class ConversationStore:
    """Conversations in the serving database (SQLite by default, PostgreSQL in production), always read and
    written within one tenant and user: another one's conversation is not found."""

    def __init__(self, engine: sa.Engine, redact_pii: bool = False) -> None:
        self.engine = engine
        self.redact_pii = redact_pii  # RAG_REDACT_PII: questions are stored redacted, as in the query log
        create_tables(metadata, engine)

    def _redacted(self, text: str) -> str:
        return redact(text)[0] if self.redact_pii and text else text

    def create(self, tenant: str, user: str, title: str) -> Conversation:
        now = datetime.now(UTC)
        conversation = Conversation(str(uuid.uuid4()), tenant, user, title, now, now, [])
        with self.engine.begin() as connection:
            connection.execute(
                conversations.insert().values(
                    conversation_id=conversation.conversation_id,
                    tenant=tenant,
                    user_name=user,
                    title=title,
                    created_at=now,
                    updated_at=now,
                )
            )
        return conversation

    def _owned(self, tenant: str, user: str):
        return (conversations.c.tenant == tenant) & (conversations.c.user_name == user)

    def get(self, conversation_id: str, tenant: str, user: str) -> Conversation:
        with self.engine.connect() as connection:
            row = (
                connection.execute(
                    sa.select(conversations).where(
                        self._owned(tenant, user) & (conversations.c.conversation_id == conversation_id)
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                raise ConversationNotFound(conversation_id)
            rows = connection.execute(
                sa.select(turns).where(turns.c.conversation_id == conversation_id).order_by(turns.c.turn_id)
            ).mappings()
            history = [
                Turn(r["question"], r["standalone_query"], r["query_id"], json.loads(r["answer"]), r["created_at"])
                for r in rows
            ]
        return Conversation(
            row["conversation_id"], tenant, user, row["title"], row["created_at"], row["updated_at"], history
        )

    def list(self, tenant: str, user: str, limit: int) -> list[Conversation]:
        """The user's conversations, most recently active first (without their turns)."""
        query = (
            sa.select(conversations)
            .where(self._owned(tenant, user))
            .order_by(conversations.c.updated_at.desc(), conversations.c.conversation_id)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [
            Conversation(r["conversation_id"], tenant, user, r["title"], r["created_at"], r["updated_at"], [])
            for r in rows
        ]

    def add_turn(self, conversation: Conversation, turn: Turn) -> None:
        question, standalone = self._redacted(turn.question), self._redacted(turn.standalone_query)
        answer = {**turn.answer, "question": question, "standalone_query": standalone}
        with self.engine.begin() as connection:
            connection.execute(
                turns.insert().values(
                    conversation_id=conversation.conversation_id,
                    question=question,
                    standalone_query=standalone,
                    query_id=turn.query_id,
                    answer=json.dumps(answer),
                    created_at=turn.created_at,
                )
            )
            connection.execute(
                conversations.update()
                .where(conversations.c.conversation_id == conversation.conversation_id)
                .values(updated_at=turn.created_at, title=conversation.title or question[:256])
            )
