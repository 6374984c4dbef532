"""cidemo-infra: a PaaS with per-pull-request environments on OpenStack or a local Docker engine."""

import importlib as _importlib
import sys as _sys
import types as _types

__version__ = "0.1.0"


class _DeferredModule(_types.ModuleType):
    """Stands in for a module until one of its attributes is first used, then imports it."""

    def __getattr__(self, attr: str) -> object:
        if _sys.modules.get(self.__name__) is self:
            del _sys.modules[self.__name__]
        return getattr(_importlib.import_module(self.__name__), attr)


def _defer_dns_resolver() -> None:
    """python-etcd imports dnspython's resolver at import (a third of the CLI's import time) for
    SRV discovery, which cidemo never asks of it: the resolver is imported on first use only."""
    if "dns.resolver" in _sys.modules:
        return
    try:
        import dns
    except ImportError:
        return
    placeholder = _DeferredModule("dns.resolver")
    _sys.modules["dns.resolver"] = placeholder
    dns.resolver = placeholder  # type: ignore[attr-defined]


_defer_dns_resolver()
