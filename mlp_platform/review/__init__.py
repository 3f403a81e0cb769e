"""Human oversight: review cases, analyst outcomes and overrides (issue 21)."""
