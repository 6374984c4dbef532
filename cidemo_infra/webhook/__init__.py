"""GitHub webhooks: verify, map events to intents, queue them for an executor, report statuses.

`events` is pure (payload in, intents out); `server` is the only part that listens on a socket and
`status` the only part that calls GitHub.
"""

from __future__ import annotations

from cidemo_infra.webhook.events import (
    DeliverySettings,
    ExecutionResult,
    Ignored,
    Intent,
    IntentExecutor,
    PayloadError,
    PreviewDown,
    PreviewUp,
    ProductionUp,
    StagingUp,
    map_event,
)

__all__ = [
    "DeliverySettings",
    "ExecutionResult",
    "Ignored",
    "Intent",
    "IntentExecutor",
    "PayloadError",
    "PreviewDown",
    "PreviewUp",
    "ProductionUp",
    "StagingUp",
    "map_event",
]
