"""The Dagster code location: documents → chunks → embeddings → the Milvus collection."""

import warnings

# dagster's own class, from the small package that defines it: importing `dagster` here would cost every
# `rag` command (`rag status` among them) seconds before it needs Dagster at all.
from dagster_shared.utils.warnings import BetaWarning

# Single-run backfill policies are what make a build over thousands of partitions one batched run;
# we use them deliberately, so their beta notice would only be noise on every import.
warnings.filterwarnings("ignore", category=BetaWarning)
