"""The environment model: names (preview, staging, production), their records and locks."""
