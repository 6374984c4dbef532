"""Targets turn a Site into an Inventory: `local` (Docker engines here) or `openstack`."""
