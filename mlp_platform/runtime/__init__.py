"""The model runtime: a registered version loaded and checked against the feature spec
(:mod:`~mlp_platform.runtime.scorer`), its trees compiled for single rows and whole matrices
(:mod:`~mlp_platform.runtime.fast_scorer`), and the loader the service, batch scoring, evaluation
and monitoring share (:mod:`~mlp_platform.runtime.loading`). It sits below all of them and imports
none of them (nor dagster, dbt or FastAPI)."""
