"""Environments (preview, staging, production), app platforms and their databases."""
