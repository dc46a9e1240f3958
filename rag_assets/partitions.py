from dagster import DynamicPartitionsDefinition

# One partition per source file (or per shard of a large .jsonl corpus), keyed by a stable path id.
documents_partitions = DynamicPartitionsDefinition(name="documents")
