"""Batch jobs of the closed loop: nightly scoring of a day's transactions with a named model version
(:mod:`mlp_platform.batch.scoring`) and loading the service's decision log into the warehouse for
drift and skew monitoring (:mod:`mlp_platform.batch.decisions`). Plain functions; no Dagster here."""
