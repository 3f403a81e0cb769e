"""Online serving: the scorer and (later) the scoring API. Imports neither dagster nor dbt."""
