"""Galera member health and whole-cluster recovery."""
