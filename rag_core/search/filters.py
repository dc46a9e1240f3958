"""What a search may see: the caller's tenant plus exact-match metadata filters, minus the chunks an operator
disabled. One validated object that each engine renders its own way — a boolean expression for Milvus, masks
for the in-memory index."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

# Scalar fields a caller may filter on, and how many values an `in` filter may hold.
FILTERABLE = ("doc_id", "source", "source_key", "title")
MAX_FILTER_VALUES = 100
# Which rows a search reads: every row, the chunks (what is shown and searched densely), or the document
# entries (rag_core.chunking: a document's whole text for BM25, at position -1).
Rows = Literal["all", "chunks", "documents"]
ROW_CLAUSES = {"all": "", "chunks": "position >= 0", "documents": "position < 0"}


class InvalidFilter(ValueError):
    """A metadata filter the API rejects with 422; the message says what is allowed."""


@dataclass(frozen=True)
class SearchFilter:
    tenant: str | None = None
    fields: tuple[tuple[str, tuple[str, ...]], ...] = ()
    excluded: frozenset[str] = frozenset()  # disabled chunk ids (rag_core.catalog.Catalog.disabled_chunks)
    rows: Rows = "all"

    @classmethod
    def parse(cls, filters: Mapping[str, object] | None, tenant: str | None) -> SearchFilter:
        """From the API's {field: value | [values]}; raises InvalidFilter naming what is allowed."""
        fields = []
        for name, value in (filters or {}).items():
            if name not in FILTERABLE:
                raise InvalidFilter(f"cannot filter on {name!r}; allowed fields: {', '.join(FILTERABLE)}")
            values = value if isinstance(value, list) else [value]
            if not values or len(values) > MAX_FILTER_VALUES:
                raise InvalidFilter(f"filter {name!r} needs 1 to {MAX_FILTER_VALUES} values")
            if not all(isinstance(item, str) and item for item in values):
                raise InvalidFilter(f"filter {name!r} values must be non-empty strings")
            fields.append((name, tuple(values)))
        return cls(tenant, tuple(sorted(fields)))

    def excluding(self, chunk_ids: frozenset[str]) -> SearchFilter:
        return replace(self, excluded=self.excluded | chunk_ids) if chunk_ids else self

    def reading(self, rows: Rows) -> SearchFilter:
        return replace(self, rows=rows)

    def within_documents(self, doc_ids: tuple[str, ...]) -> SearchFilter:
        """Also only these documents (besides any doc_id filter the caller set: both hold)."""
        return replace(self, fields=(*self.fields, ("doc_id", doc_ids)))

    def expression(self) -> str:
        """The Milvus boolean expression: the tenant clause first, then one `in` clause per field, then the
        disabled chunks."""
        clauses = [f"tenant == {milvus_string(self.tenant)}"] if self.tenant is not None else []
        clauses += [f"{name} in [{', '.join(map(milvus_string, values))}]" for name, values in self.fields]
        if self.rows != "all":
            clauses.append(ROW_CLAUSES[self.rows])
        if self.excluded:
            clauses.append(f"chunk_id not in [{', '.join(map(milvus_string, sorted(self.excluded)))}]")
        return " and ".join(clauses)


def milvus_string(value: str) -> str:
    """A Milvus expression string literal. Non-ASCII stays as it is: Milvus reads no `\\uXXXX` escapes (JSON's
    `ensure_ascii` output made `Café` a filter nothing matched, or an error). Backslash and double quote are
    escaped the way Milvus unescapes them, and line breaks and tabs as `\\n`, `\\r`, `\\t`."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'
