"""Deciders: the decision services the platform runs, each declared in one file (``deciders/*.yaml``)."""
