"""Benchmarks of recon_pipeline against a hand-written floor (see benchmarks/README.md)."""
