"""Backups of an environment's database (format, verification, restore) and where they are kept."""
