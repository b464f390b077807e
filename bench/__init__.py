"""Benchmarks and simulations, run as scripts (``python bench/NAME.py``); a package so tests import them."""
