"""Tests against a real OpenStack named by OS_CLOUD (tests/cloud/openstack boots one)."""
