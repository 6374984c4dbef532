"""Placement: desired container specs, observed containers, a pure diff, and one executor."""
