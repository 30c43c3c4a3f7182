"""Benchmarks against ground truth. `synthetic`: DSM vs FP-regularised score models on the
low-dimensional data sets of FP-Diffusion (issue 4)."""
