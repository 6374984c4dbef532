"""cidemo-infra: a PaaS with per-pull-request environments on OpenStack or a local Docker engine."""

__version__ = "0.1.0"
