"""The Dagster code location: documents → chunks → embeddings → the Milvus collection."""

import warnings

from dagster import BetaWarning

# Single-run backfill policies are what make a build over thousands of partitions one batched run;
# we use them deliberately, so their beta notice would only be noise on every import.
warnings.filterwarnings("ignore", category=BetaWarning)
