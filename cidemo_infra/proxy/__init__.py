"""The database proxy's configuration for site-supplied proxy images (MaxScale)."""
