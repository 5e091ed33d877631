"""Free text from the input topics: its length caps, and what of it may be shown to people.

Input records carry strings the contract does not bound (ids, brand, template,
sender, SMTP status). notifguard copies them into alerts, state and metric
labels, so a 600 KB `template` made a 1.2 MB alert that the producer refused
(its request limit is 1 MB): the worker stopped, restarted and read the same
record again, for ever. Two rules keep such text in bounds:

- Caps (applied when a record is decoded, detectors.records): a string over its
  cap is cut to a prefix with a marker, the whole at most the cap. Ids get a
  hash of the whole value in the marker, so two long ids that share a prefix
  stay two ids (dedup, dedup_key, message and contract matching); a value at or
  under its cap is never changed.
- Shown forms (for alert summaries and metric labels): a value is shown only if
  it looks like a name or an id of the contract's examples; anything else (an
  address, a sentence, a cut value) is replaced by a fixed word, while the
  alert's structured fields keep the (capped) value.
"""

from __future__ import annotations

import hashlib
import re
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

# What may be shown in a summary or a metric label: a short name of letters,
# digits, `_`, `.`, `-` (no space, no `@`: an address or a sentence is not a
# name). 64 characters is the longest label value a dashboard legend shows.
NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9_.-]{0,63}\Z"
# Ids shown in summaries: the same, with `:` and `/` (URNs, paths of ids).
ID_PATTERN: Final = r"^[a-z0-9][a-z0-9_.:/-]{0,63}\Z"
# RFC 3463 enhanced status code, as the contract describes smtp_status (`5.1.1`).
SMTP_STATUS_PATTERN: Final = r"^[245]\.[0-9]{1,3}\.[0-9]{1,3}\Z"
_NAME_RE: Final = re.compile(NAME_PATTERN, re.IGNORECASE | re.ASCII)
_ID_RE: Final = re.compile(ID_PATTERN, re.IGNORECASE | re.ASCII)
_SMTP_RE: Final = re.compile(SMTP_STATUS_PATTERN, re.ASCII)
OTHER: Final = "other"  # a metric label value that is not shown


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


def is_name(value: str) -> bool:
    """A value that may be shown as it is: NAME_PATTERN, case-insensitive."""
    return _NAME_RE.match(value) is not None


def shown_name(value: str | None, what: str) -> str:
    """`value` for a summary if it is a name, else `(unrecognised <what>)`."""
    if value is not None and _NAME_RE.match(value) is not None:
        return value
    return f"(unrecognised {what})"


def shown_id(value: str | None) -> str:
    """An id for a summary if it looks like one (ID_PATTERN), else `(unrecognised id)`."""
    if value is not None and _ID_RE.match(value) is not None:
        return value
    return "(unrecognised id)"


def shown_smtp_status(value: str | None) -> str:
    """smtp_status for a summary: an RFC 3463 code as it is, else a fixed phrase."""
    if value is None:
        return "no SMTP status"
    if _SMTP_RE.match(value) is not None:
        return value
    return "unrecognised SMTP status"
