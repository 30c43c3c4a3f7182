"""Evaluation: samplers of the reverse process, the LeNet feature extractor, sample metrics."""
