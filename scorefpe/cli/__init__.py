"""Thin click commands over the scorefpe library: parse, validate, call, write."""
