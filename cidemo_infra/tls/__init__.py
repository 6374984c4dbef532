"""The per-site CA and the certificates of the nodes' Docker APIs and of the tool."""

from cidemo_infra.tls.pki import Pki, PkiError, ensure_pki

__all__ = ["Pki", "PkiError", "ensure_pki"]
