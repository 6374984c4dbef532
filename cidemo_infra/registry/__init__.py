"""etcd keys of DESIGN.md's contract: read, write and watch them through the v2 API."""
