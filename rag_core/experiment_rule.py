"""The rule an A/B experiment is held to, declared before any data. Kept apart from rag_core.experiments
(its store and statistics) so that the settings can validate a rule without loading numpy or SQLAlchemy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rag_core.experiments import Arm

# metric → True when higher is better. Latencies are retrieval's (embed + search + rerank), in ms.
METRICS: dict[str, bool] = {
    "relevance_rate": True,
    "mean_rating": True,
    "feedback_rate": True,
    "latency_p50_ms": False,
    "latency_p95_ms": False,
    "degraded_rate": False,
}
PRIMARY_METRICS = ("relevance_rate", "mean_rating")


@dataclass(frozen=True)
class DecisionRule:
    """Declared when the experiment is created, before any data: the verdict it will be held to.

    Each arm needs `min_samples` observations of the primary metric (judged answers for `relevance_rate`,
    ratings for `mean_rating`) before there is any verdict. An arm ships when its primary metric beats the
    control's with the interval of the difference above zero (confidence 1 − alpha, Bonferroni-split over
    the arms), and no guardrail is worse than the control's by more than `guardrail_tolerance` (a fraction
    of the control's value) with its whole interval."""

    min_samples: int = 200
    primary_metric: str = "relevance_rate"
    guardrails: tuple[str, ...] = ("latency_p95_ms", "degraded_rate")
    control: str = ""  # "" = the first arm
    alpha: float = 0.05
    guardrail_tolerance: float = 0.1

    def validate(self, arms: Sequence[Arm]) -> None:
        if self.min_samples < 1:
            raise ValueError("min_samples must be at least 1")
        if self.primary_metric not in PRIMARY_METRICS:
            raise ValueError(f"primary metric {self.primary_metric!r}: choose one of {', '.join(PRIMARY_METRICS)}")
        if unknown := [name for name in self.guardrails if name not in METRICS]:
            raise ValueError(f"guardrails {unknown}: choose from {', '.join(METRICS)}")
        if self.control and self.control not in {arm.name for arm in arms}:
            raise ValueError(f"the control {self.control!r} is not one of the arms")
        if not 0 < self.alpha < 0.5:
            raise ValueError("alpha must be between 0 and 0.5")
