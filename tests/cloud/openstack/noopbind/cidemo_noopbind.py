"""An ML2 mechanism driver that binds every port at once, for a test cloud without L2 agents.

Neutron removed linuxbridge, and openvswitch/OVN need live agents; without a driver that binds,
ports stay `binding_failed` and nova refuses them. The fake compute driver plugs nothing, so
claiming an OVS binding is harmless here. Never load this in a real cloud.
"""

from __future__ import annotations

from typing import Any

from neutron_lib import constants
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins.ml2 import api


class NoopBindMechanismDriver(api.MechanismDriver):
    """Bind the first segment offered, as an OVS port that is ACTIVE immediately."""

    def initialize(self) -> None:
        pass

    def bind_port(self, context: Any) -> None:
        for segment in context.segments_to_bind:
            context.set_binding(
                segment[api.ID],
                portbindings.VIF_TYPE_OVS,
                {portbindings.CAP_PORT_FILTER: True, portbindings.OVS_HYBRID_PLUG: False},
                status=constants.PORT_STATUS_ACTIVE,
            )
            return
