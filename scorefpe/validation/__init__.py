"""Validation battery behind `scorefpe check`."""
