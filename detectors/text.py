"""Free text from the input topics: its length caps, and what of it may be shown to people.

Input records carry strings the contract does not bound (ids, brand, template,
sender, SMTP status). notifguard copies them into alerts, state and metric
labels, so a 600 KB `template` made a 1.2 MB alert that the producer refused
(its request limit is 1 MB): the worker stopped, restarted and read the same
record again, for ever.

So free text is capped when a record is decoded (detectors.records): a string
over its cap is cut to a prefix with a marker, the whole at most the cap. Ids
get a hash of the whole value in the marker, so two long ids that share a
prefix stay two ids (dedup, dedup_key, message and contract matching); a value
at or under its cap is never changed.
"""

from __future__ import annotations

import hashlib
from typing import Final

# Ids (event_id, message_id, contract_id, customer_id): the contract's ids are a
# few dozen characters (UUIDs 36, `K-29296629`, provider message ids ~60: an
# RFC 5322 Message-ID is bounded only by the 998-character line limit, in
# practice < 100); 256 keeps every real one whole. At most 256 characters is
# 1 KiB of UTF-8: an alert quotes up to ~25 ids, a number's state a few hundred.
ID_MAX: Final = 256
# Names (brand, template, sender, smtp_status): the contract's examples are
# words (`o2`, `cancellation_confirmation`, `crm-mailer`, `5.1.1`) under 30
# characters; 128 leaves room for a processor's name and an SMTP reply text,
# and a Prometheus label value of that size is still readable on a dashboard.
NAME_MAX: Final = 128
TRUNCATED: Final = "…[truncated]"
_ID_MARK: Final = "…[truncated:"  # + 16 hex digits of the whole id's SHA-256 + "]"
_ID_HASH_HEX: Final = 16  # 64 bits: no two different long ids of one number will collide


def cap_id(value: str) -> str:
    """An id at most ID_MAX characters: unchanged if it fits, else a prefix,
    `…[truncated:` and 16 hex digits of the SHA-256 of the whole id (UTF-8), `]`."""
    if len(value) <= ID_MAX:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:_ID_HASH_HEX]
    keep = ID_MAX - len(_ID_MARK) - _ID_HASH_HEX - 1
    return f"{value[:keep]}{_ID_MARK}{digest}]"


def cap_name(value: str) -> str:
    """A name at most NAME_MAX characters: unchanged if it fits, else a prefix and `…[truncated]`."""
    if len(value) <= NAME_MAX:
        return value
    return value[: NAME_MAX - len(TRUNCATED)] + TRUNCATED


def cap_text(value: str, limit: int) -> str:
    """Any other text at most `limit` characters (a prefix and `…[truncated]`)."""
    if len(value) <= limit:
        return value
    return value[: max(0, limit - len(TRUNCATED))] + TRUNCATED
