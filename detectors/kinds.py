"""Alert kinds of the contract, with their fixed severities."""

from __future__ import annotations

from typing import Final

NOTIFICATION_WITHOUT_CONTRACT: Final = "notification_without_contract"
RECIPIENT_PREVIOUS_HOLDER: Final = "recipient_previous_holder"
RECIPIENT_OTHER_CUSTOMER: Final = "recipient_other_customer"
RECIPIENT_STALE_CONTRACT: Final = "recipient_stale_contract"
RECIPIENT_UNLINKED: Final = "recipient_unlinked"
RE_PORT: Final = "re_port"
PORT_FLAPPING: Final = "port_flapping"
CURRENT_ADDRESS_BOUNCING: Final = "current_address_bouncing"
BOUNCE_BURST: Final = "bounce_burst"

SEVERITY: Final = {
    NOTIFICATION_WITHOUT_CONTRACT: "critical",
    RECIPIENT_PREVIOUS_HOLDER: "critical",
    RECIPIENT_OTHER_CUSTOMER: "critical",
    RECIPIENT_STALE_CONTRACT: "warning",
    RECIPIENT_UNLINKED: "warning",
    RE_PORT: "info",
    PORT_FLAPPING: "warning",
    CURRENT_ADDRESS_BOUNCING: "warning",
    BOUNCE_BURST: "warning",
}
KINDS: Final = tuple(SEVERITY)
RECIPIENT_KINDS: Final = KINDS[:5]
PATTERN_KINDS: Final = KINDS[5:]
OK: Final = "ok"  # the verdict of a notification that raises nothing
