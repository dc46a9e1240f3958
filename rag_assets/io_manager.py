"""An IO manager for partitioned assets that are materialized many partitions per run.

Dagster's filesystem IO manager cannot persist one output that covers several partitions (a
single-run backfill); here an asset returns `{partition_key: value}` and each partition is stored in its
own file, so a later run over one partition reads exactly that partition.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

from dagster import ConfigurableIOManager, InputContext, OutputContext


class PartitionedPickleIOManager(ConfigurableIOManager):
    base_dir: str

    def _path(self, asset_key: list[str], partition_key: str) -> Path:
        return Path(self.base_dir, *asset_key, f"{partition_key}.pkl")

    def handle_output(self, context: OutputContext, obj: dict[str, Any]) -> None:
        expected = set(context.asset_partition_keys)
        if not isinstance(obj, dict) or set(obj) != expected:
            raise TypeError(
                f"{context.asset_key.to_user_string()} must return {{partition_key: value}} for exactly "
                f"the partitions of the run ({len(expected)}), got {type(obj).__name__}"
            )
        for key, value in obj.items():
            path = self._path(context.asset_key.path, key)
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".tmp{os.getpid()}")
            with temporary.open("wb") as handle:
                pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)
            temporary.replace(path)

    def load_input(self, context: InputContext) -> dict[str, Any]:
        loaded = {}
        for key in context.asset_partition_keys:
            path = self._path(context.asset_key.path, key)
            if not path.exists():
                raise FileNotFoundError(
                    f"{context.asset_key.to_user_string()} has no stored output for partition {key} — "
                    "materialize it first (e.g. `rag index`, or select the upstream asset in the UI)"
                )
            with path.open("rb") as handle:
                loaded[key] = pickle.load(handle)
        return loaded

    def delete_partitions(self, asset_keys: list[list[str]], partition_keys: list[str]) -> int:
        removed = 0
        for asset_key in asset_keys:
            for key in partition_keys:
                path = self._path(asset_key, key)
                if path.exists():
                    path.unlink()
                    removed += 1
        return removed
