"""Domain code shared by the Dagster assets and the serving API: no Dagster or FastAPI imports here."""
