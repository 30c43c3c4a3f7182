"""Evaluation of trained MNIST run directories: samples and the metrics table (`run_eval`),
noise-level diagnostics (`diagnostics`), score and divergence maps (`maps`)."""
