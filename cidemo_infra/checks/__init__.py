"""Smoke checks: each a named verdict with a one-line detail."""
