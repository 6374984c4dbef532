"""Environments' databases on the site's cluster: users, grants, clones."""
