"""Blue/green index builds. Each collection is one build (embedding model + chunking); the serving alias
points at the promoted one. A candidate build is written to a new collection while the old one keeps
serving; its evaluation gates the alias move; the previous collection stays for a one-command rollback.

What a collection is and did is recorded in its own properties, so every process (indexing runs, serving
replicas, the CLI) sees the same history without another database.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Literal

from rag_core.build_record import BuildRecord
from rag_core.chunking import ChunkingConfig
from rag_core.embedding import Embedder, backend_of
from rag_core.errors import Refusal
from rag_core.indexing import SyncStats, sync_partitions
from rag_core.query import RerankPolicy
from rag_core.retrieval import FusionConfig
from rag_core.search.analyzer import DEFAULT_ANALYZER
from rag_core.stats import paired_bootstrap_difference
from rag_core.store import IndexBuild, MilvusStore

CANDIDATE, PROMOTED, REJECTED, RETIRED, ROLLED_BACK = "candidate", "promoted", "rejected", "retired", "rolled_back"
DEFAULT_CHUNKING = ChunkingConfig()  # the sizes of a build that records none, and of a first candidate


@dataclass(frozen=True)
class BuildSpec:
    """What a run builds with, decided once where the run is requested and carried with it: the model
    reference (rag_core.models) and the embedding version it loads as, the embedding backend, the chunk
    sizes, the collection the run writes, and the collection the alias served when it was decided."""

    model: str
    chunk_max_tokens: int
    chunk_overlap_tokens: int
    backend: str = "torch"
    embedding_version: str = ""
    collection: str = ""
    served: str = ""  # "" = nothing was served: the build is the first, and is published
    document_entries: bool = True  # a whole-document BM25 entry per document (rag_core.chunking)
    bm25_analyzer: str = DEFAULT_ANALYZER  # what the BM25 field holds (rag_core.search.analyzer)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BuildSpec:
        return cls(**json.loads(text))

    def chunking(self, model_limit: int) -> ChunkingConfig:
        """Chunks (with their title) fit `model_limit`: the model's sequence length less its special tokens."""
        return ChunkingConfig(
            self.chunk_max_tokens,
            self.chunk_overlap_tokens,
            model_limit,
            document_entries=self.document_entries,
            bm25_analyzer=self.bm25_analyzer,
        )

    def describe(self) -> str:
        chunking = self.chunking(DEFAULT_CHUNKING.model_limit).describe()
        return f"{self.embedding_version or self.model}, {chunking} → {self.collection or 'no collection yet'}"


def fit_chunking(chunking: ChunkingConfig, embedder: Embedder) -> ChunkingConfig:
    """`chunking` for `embedder`: chunks (with their title) fit its sequence length less its special tokens."""
    return replace(chunking, model_limit=embedder.max_seq_length - 2)


def index_build(embedder: Embedder, chunking: ChunkingConfig) -> IndexBuild:
    return IndexBuild(
        embedding_model=embedder.version.split("@")[0],
        embedding_version=embedder.version,
        dimension=embedder.dimension,
        chunking=chunking.describe(),
        model_reference=embedder.reference,
        chunk_max_tokens=chunking.max_tokens,
        chunk_overlap_tokens=chunking.overlap_tokens,
        document_entries=chunking.document_entries,
        bm25_analyzer=chunking.bm25_analyzer,
    )


def spec_of(properties: dict[str, str], default_model: str, collection: str = "") -> BuildSpec:
    """The spec a collection was built with (collections from before these properties: the base model).
    The backend is the one its embedding version names (`…@hash+onnx-int8`; a bare `…@hash` is torch)."""
    record = BuildRecord.from_properties(properties)
    return BuildSpec(
        record.model_reference or default_model,
        DEFAULT_CHUNKING.max_tokens if record.chunk_max_tokens is None else record.chunk_max_tokens,
        DEFAULT_CHUNKING.overlap_tokens if record.chunk_overlap_tokens is None else record.chunk_overlap_tokens,
        backend_of(record.embedding_version),
        record.embedding_version,
        collection,
        document_entries=bool(record.document_entries),
        bm25_analyzer=record.analyzer,
    )


def served_spec(store: MilvusStore, default_model: str) -> BuildSpec | None:
    served = store.alias_target()
    return spec_of(store.collection_properties(served), default_model, served) if served else None


def candidate_build(
    served: BuildSpec | None,
    default_model: str,
    model: str = "",
    chunk_max_tokens: int = 0,
    chunk_overlap_tokens: int = -1,
    document_entries: bool | None = None,
    bm25_analyzer: str = "",
) -> tuple[str, ChunkingConfig]:
    """The model reference and chunk sizes a candidate build is made with: those asked for, the rest as the
    served build has them (nothing served: `default_model` and the default sizes). An empty `model`, a
    `chunk_max_tokens` of 0 and a `chunk_overlap_tokens` of -1 ask for nothing. The chunking's model limit
    is the model's to set (`fit_chunking`), once it is loaded. `document_entries` None and an empty
    `bm25_analyzer` follow the served build (nothing served: the defaults)."""
    reference = model or (served.model if served else default_model)
    max_tokens = chunk_max_tokens or (served.chunk_max_tokens if served else DEFAULT_CHUNKING.max_tokens)
    if chunk_overlap_tokens >= 0:
        overlap = chunk_overlap_tokens
    else:
        overlap = served.chunk_overlap_tokens if served else DEFAULT_CHUNKING.overlap_tokens
    if overlap >= max_tokens:
        raise ValueError(
            f"chunk overlap {overlap} must be smaller than the chunk size {max_tokens} — ask for a smaller "
            "chunk_overlap_tokens or a larger chunk_max_tokens"
        )
    if document_entries is None:
        document_entries = served.document_entries if served else DEFAULT_CHUNKING.document_entries
    if not bm25_analyzer:
        bm25_analyzer = served.bm25_analyzer if served else DEFAULT_CHUNKING.bm25_analyzer
    return reference, ChunkingConfig(
        max_tokens, overlap, document_entries=document_entries, bm25_analyzer=bm25_analyzer
    )


def sync_build(store: MilvusStore, collection: str, rows: dict[str, list[dict]], served: str | None) -> SyncStats:
    """Make `collection` hold exactly these partitions' rows, then place it beside `served` (what the alias
    served before the write): the first build has nothing to be compared with and is published; a build
    next to another served one is a candidate that only `promote` may publish."""
    stats = sync_partitions(store, collection, rows)
    if stats.inserted or stats.deleted:  # a one-pass build's recorded size no longer holds
        store.update_record(collection, expected_rows=None)
    if served is None:
        promote(store, collection, ndcg=None)
    elif served != collection:
        store.update_record(collection, status=CANDIDATE)
    return stats


GateRule = Literal["improvement", "tolerance"]
# A candidate must prove a gain: its paired interval over the served build excludes zero and its mean gain
# reaches the declared minimum effect. Tolerance only keeps a build from falling more than a margin below a
# reference: the served build re-measured after a reindex, or an A/B winner offline (it already won online).
IMPROVEMENT: GateRule = "improvement"
TOLERANCE: GateRule = "tolerance"
GATE_RULES: tuple[GateRule, ...] = (IMPROVEMENT, TOLERANCE)
GATE_CONFIDENCE, GATE_RESAMPLES, GATE_SEED = 0.95, 2000, 0


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    candidate_ndcg: float
    baseline_ndcg: float | None
    margin: float
    reason: str
    rule: GateRule = TOLERANCE
    min_effect: float | None = None  # the improvement rule's bar
    effect: float | None = None  # mean per-query nDCG@10 gain over the served build, and its interval
    effect_low: float | None = None
    effect_high: float | None = None


def gate(candidate_ndcg: float, baseline_ndcg: float | None, margin: float) -> GateDecision:
    """The tolerance rule: a build may not fall more than `margin` (absolute nDCG@10) below `baseline_ndcg`."""
    if baseline_ndcg is None:
        return GateDecision(True, candidate_ndcg, None, margin, "no promoted index to compare with")
    floor = baseline_ndcg - margin
    if candidate_ndcg + 1e-9 >= floor:
        return GateDecision(
            True, candidate_ndcg, baseline_ndcg, margin,
            f"nDCG@10 {candidate_ndcg:.4f} ≥ promoted {baseline_ndcg:.4f} − margin {margin:.4f}",
        )
    return GateDecision(
        False, candidate_ndcg, baseline_ndcg, margin,
        f"nDCG@10 {candidate_ndcg:.4f} is more than {margin:.4f} below the promoted index's {baseline_ndcg:.4f}",
    )


def improvement_gate(
    candidate_ndcg: float,
    served_ndcg: float,
    candidate_scores: Mapping[str, float],
    served_scores: Mapping[str, float],
    min_effect: float,
) -> GateDecision:
    """The improvement rule: over the judged queries both builds answered, the candidate's mean per-query
    nDCG@10 gain reaches `min_effect` and its paired bootstrap interval (seeded, 2,000 resamples, 95%) lies
    above zero. `candidate_ndcg`/`served_ndcg` are the means the evaluation reported, recorded as they are."""
    queries = sorted(candidate_scores.keys() & served_scores.keys())  # sorted: the seeded resamples repeat
    candidate = [candidate_scores[query] for query in queries]
    served = [served_scores[query] for query in queries]
    found = paired_bootstrap_difference(
        "ndcg@10", served, candidate, confidence=GATE_CONFIDENCE, rounds=GATE_RESAMPLES, seed=GATE_SEED
    )
    if found.difference is None or found.low is None or found.high is None:
        reason = "no judged query was answered by both the candidate and the served build — nothing to compare"
        return GateDecision(False, candidate_ndcg, served_ndcg, 0.0, reason, IMPROVEMENT, min_effect)
    effect = (
        f"nDCG@10 {found.difference:+.4f} (95% CI {found.low:+.3f} to {found.high:+.3f}, {len(queries)} queries) "
        "over the served build"
    )
    if found.low <= 0:
        passed = False
        reason = f"{effect}: the interval is not above zero — no proven gain (min effect {min_effect})"
    elif found.difference + 1e-9 < min_effect:
        passed, reason = False, f"{effect} is below the min effect {min_effect}"
    else:
        passed, reason = True, f"{effect} ≥ min effect {min_effect}"
    return GateDecision(
        passed, candidate_ndcg, served_ndcg, 0.0, reason, IMPROVEMENT, min_effect, found.difference, found.low,
        found.high,
    )


def judge(
    store: MilvusStore,
    target: str,
    served: str,
    ndcg: float,
    served_ndcg: float,
    margin: float,
    rule: GateRule | str = IMPROVEMENT,
    min_effect: float | None = None,
    scores: Mapping[str, float] | None = None,
    served_scores: Mapping[str, float] | None = None,
) -> GateDecision:
    """The gate for `target` (its nDCG@10 `ndcg`, per query `scores`). A candidate is held by `rule` to the
    served build measured in the same run (`served_ndcg`, `served_scores`): improvement by default, tolerance
    for an A/B winner. The served build itself is always held with tolerance to the nDCG recorded at its
    promotion. A failing candidate is marked rejected; the first measurement of the served build becomes the
    baseline later evaluations hold."""
    if rule not in GATE_RULES:
        raise ValueError(f"gate rule {rule!r} is not one of {', '.join(GATE_RULES)}")
    candidate = target != served
    if not candidate:
        baseline = recorded_ndcg(store, served)
        decision = gate(ndcg, baseline, margin)
        if baseline is None:
            store.update_record(served, eval_ndcg_at_10=ndcg)
        return decision
    if rule == IMPROVEMENT:
        if scores is None or served_scores is None or min_effect is None:
            raise ValueError(
                "the improvement rule pairs per-query nDCG@10 against a declared minimum effect — pass `scores`, "
                "`served_scores` and `min_effect` (RAG_PROMOTION_MIN_EFFECT)"
            )
        decision = improvement_gate(ndcg, served_ndcg, scores, served_scores, min_effect)
    else:
        decision = gate(ndcg, served_ndcg, margin)
    if not decision.passed:
        reject(store, target, decision.reason)
    return decision


def waiting_candidate(store: MilvusStore) -> str | None:
    """The newest collection built for promotion and not yet judged."""
    candidates = []
    for name in store.list_collections():
        record = store.record(name)
        if record.status == CANDIDATE:
            candidates.append((record.created_at, name))
    return max(candidates)[1] if candidates else None


def recorded_ndcg(store: MilvusStore, collection: str) -> float | None:
    return store.record(collection).eval_ndcg_at_10


def promote(store: MilvusStore, collection: str, ndcg: float | None) -> str | None:
    """Move the alias to `collection` atomically; returns the collection it served before."""
    previous = store.alias_target()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if previous == collection:
        if ndcg is not None:
            store.update_record(collection, eval_ndcg_at_10=ndcg)
        return previous
    promoted: dict[str, object] = {"status": PROMOTED, "promoted_at": stamp}
    if previous:
        promoted["promoted_from"] = previous
    if ndcg is not None:
        promoted["eval_ndcg_at_10"] = ndcg
    store.update_record(collection, **promoted)
    store.point_alias(collection)
    if previous:
        store.update_record(previous, status=RETIRED, retired_at=stamp)
    return previous


def reject(store: MilvusStore, collection: str, reason: str) -> None:
    store.update_record(collection, status=REJECTED, rejected_reason=reason[:500])


def rollback(store: MilvusStore) -> tuple[str, str]:
    """Serve the build that was promoted before the current one. Returns (from, to)."""
    current = store.alias_target()
    if current is None:
        raise Refusal(f"the alias {store.alias} serves nothing yet — nothing to roll back (build it with `rag index`)")
    previous = store.record(current).promoted_from
    if not previous:
        raise Refusal(
            f"{current} records no previous build (promoted_from) — nothing to roll back to; "
            "`rag builds` lists the builds"
        )
    if not store.has_collection(previous):
        raise Refusal(f"the previous build {previous} was dropped — rollback needs it; rebuild it instead")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    store.point_alias(previous)
    store.update_record(previous, status=PROMOTED, promoted_at=stamp)
    store.update_record(current, status=ROLLED_BACK, rolled_back_at=stamp)
    return current, previous


def _reranker_column(record: BuildRecord) -> str:
    """`models:/rag-reranker/2 (hybrid 0.3, dense 0.5)`: the reranker the gate recorded, or "none"."""
    weights = recorded_rerank_weights(record)
    if not record.reranker or not weights:
        return "none"
    return f"{record.reranker} ({', '.join(f'{mode} {weight:g}' for mode, weight in weights.items())})"


def builds(store: MilvusStore) -> list[dict[str, str]]:
    """Every build under the alias' prefix with its status, newest promotion first."""
    served = store.alias_target()
    rows = []
    for name in store.list_collections():
        record = store.record(name)
        ndcg = "" if record.eval_ndcg_at_10 is None else f"{record.eval_ndcg_at_10:.6f}"
        rows.append(
            {
                "collection": name,
                "served": str(name == served),
                "status": record.status or (PROMOTED if name == served else CANDIDATE),
                "model": record.embedding_version,
                "chunking": record.chunking,
                "ndcg_at_10": ndcg,
                "promoted_at": record.promoted_at,
                "reranker": _reranker_column(record),
            }
        )
    rows.sort(key=lambda row: row["promoted_at"], reverse=True)
    return sorted(rows, key=lambda row: row["served"] != "True")  # stable: the newest promotion stays first


@dataclass(frozen=True)
class FusionDecision:
    """Whether a build adopts a tuned fusion: tuned on one split, it must gain there and hold on another."""

    adopted: bool
    fusion: str  # FusionConfig.to_json of the proposal; "" when nothing was proposed
    reason: str


def fusion_verdict(
    proposal: FusionConfig | None, train_gain: float, current_ndcg: float, proposed_ndcg: float | None
) -> FusionDecision:
    """The gate for a tuned fusion. `train_gain`: its nDCG@10 over the current fusion's on the tuning queries;
    `current_ndcg`/`proposed_ndcg`: both fusions on the gate's own queries, which tuning never saw. The
    proposal is adopted only if it does not lose there: a gain that does not carry over is SciFact's lesson."""
    if proposal is None or proposed_ndcg is None:
        reason = f"no fusion beat the current one by enough on the tuning queries (best {train_gain:+.4f})"
        return FusionDecision(False, "", reason)
    if proposed_ndcg + 1e-9 < current_ndcg:
        return FusionDecision(
            False, proposal.to_json(),
            f"tuned +{train_gain:.4f} on the tuning queries but {proposed_ndcg:.4f} < {current_ndcg:.4f} on the "
            "evaluation queries: the gain did not carry over",
        )
    return FusionDecision(
        True, proposal.to_json(),
        f"+{train_gain:.4f} on the tuning queries and {proposed_ndcg:.4f} ≥ {current_ndcg:.4f} on the evaluation "
        "queries",
    )


def served_fusion(record: BuildRecord, configured: FusionConfig, explicit: bool) -> FusionConfig:
    """The fusion a build is served (and evaluated) with: `configured` when the deployment sets any fusion
    setting explicitly (`explicit`), else the one the gate adopted for the build, else `configured` (the
    defaults). An unreadable record serves `configured`."""
    if explicit or not record.fusion:
        return configured
    try:
        return FusionConfig.from_json(record.fusion)
    except (ValueError, TypeError, KeyError):
        return configured


def adopt_fusion(store: MilvusStore, collection: str, decision: FusionDecision) -> None:
    """Record the adopted fusion on the build: every serving process uses it from its next poll."""
    if decision.adopted:
        store.update_record(collection, fusion=decision.fusion)


@dataclass(frozen=True)
class ServedReranker:
    """The reranker a build is served with: its model, the weight of a named one, and the modes (with weights)
    the gate proved it in (None: every mode at `weight`)."""

    reference: str
    weight: float
    modes: tuple[tuple[str, float], ...] | None = None

    def mode_weights(self) -> dict[str, float] | None:
        return dict(self.modes) if self.modes is not None else None


def recorded_rerank_weights(record: BuildRecord) -> dict[str, float]:
    """{mode: weight} the reranker gate recorded on a build ({} for none, or an unreadable record)."""
    try:
        weights = json.loads(record.rerank_weights) if record.rerank_weights else {}
        return {str(mode): float(weight) for mode, weight in weights.items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def served_reranker(
    record: BuildRecord, policy: RerankPolicy, weight: float, weight_explicit: bool
) -> ServedReranker | None:
    """The reranker a build is served with, or None. `policy` is RAG_RERANK_MODEL: a named model reranks every
    mode at `weight`; `auto` reranks with the one the reranker gate recorded on the build, in the modes it proved
    a gain in (none recorded: no reranking); `off` never. The recorded weights serve unless the deployment sets
    RAG_RERANK_WEIGHT (`weight_explicit`)."""
    if policy.named:
        return ServedReranker(policy.named, weight)
    if not policy.auto:
        return None
    modes = recorded_rerank_weights(record)
    if not record.reranker or not modes:
        return None
    if weight_explicit:
        modes = dict.fromkeys(modes, weight)
    return ServedReranker(record.reranker, weight, tuple(sorted(modes.items())))


def rerank_modes_text(modes: Mapping[str, float]) -> str:
    """{mode: weight} as people read it: `hybrid (weight 0.4), dense (weight 0.2)`."""
    return ", ".join(f"{mode} (weight {weight:g})" for mode, weight in modes.items())


def reranker_after_promotion(
    record: BuildRecord, previous: BuildRecord | None, previous_name: str = ""
) -> tuple[str, str]:
    """(what the newly served build reranks with, the reranker the replaced build served that this one does not
    yet: "" when none), for the promotion's metadata. A reranker is judged per build, so one the previous build
    served is not carried over: it is named, to be judged on the new build (`rerank_after_promotion_sensor`)."""
    modes = recorded_rerank_weights(record)
    if record.reranker and modes:
        return f"{record.reranker} in {rerank_modes_text(modes)}", ""
    hint = "`rag train-reranker` trains one and judges it on this build"
    dropped = recorded_rerank_weights(previous) if previous is not None and previous.reranker else {}
    if previous is not None and previous.reranker and dropped:
        where = previous_name or "the previous build"
        return (
            f"none yet: {previous.reranker} reranked {', '.join(dropped)} on {where} and is not carried over "
            f"(a reranker is judged per build) — `rerank_after_promotion_sensor` judges it on this build (Dagster "
            f"daemon running), `rag train-reranker --judge {previous.reranker}` does it by hand",
            previous.reranker,
        )
    return f"none recorded — {hint}", ""


def may_record_reranker(record: BuildRecord, reference: str, replace_recorded: bool) -> bool:
    """Whether a reranker proven on a build may be recorded on it: always with `replace_recorded` (a training
    just judged it), otherwise only where the build records no other one (a later judgement of an older reranker
    must not undo one proven since)."""
    return replace_recorded or not record.reranker or record.reranker == reference


def adopt_reranker(store: MilvusStore, collection: str, reference: str, modes: Mapping[str, float]) -> None:
    """Record a reranker the gate proved on the build in `modes` ({mode: weight}): `auto` serving reranks with
    it from its next poll; no modes clears it."""
    weights = json.dumps(dict(sorted(modes.items()))) if modes else None
    store.update_record(collection, reranker=reference if modes else None, rerank_weights=weights)
