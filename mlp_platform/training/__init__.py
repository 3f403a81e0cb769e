"""Training: time-ordered splits and LightGBM fitting with a bounded, validation-only search."""
