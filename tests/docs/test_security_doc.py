"""docs/security.md lists exactly the ACLs streams/acls.py grants each principal."""

from __future__ import annotations

import re
from pathlib import Path

from detectors.settings import Topics
from streams.acls import check_acls, forwarder_acls, incidents_acls, worker_acls

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"**{title}**")
    end = text.index("**", text.index("**", start + 2) + 2)
    return text[start:end]


def _listed(section: str) -> set[str]:
    """Every `OPERATION RESOURCE name` of a section, `A, B` lists split."""
    return set(re.findall(r"`([A-Z_]+ [A-Z_]+ [^`]+)`", section))


def test_the_documented_acls_are_the_granted_ones():
    topics = Topics()
    for title, acls in [
        ("Worker", worker_acls(topics, "notifguard", exactly_once=True)),
        ("Forwarder", forwarder_acls(topics)),
        ("Incidents", incidents_acls(topics)),
        ("Staging tools", check_acls(topics)),
    ]:
        listed = _listed(_section(title))
        granted = {a.render() for a in acls}
        assert granted <= listed, (title, granted - listed)
        if title != "Staging tools":  # capture and replay are written with a placeholder topic
            assert listed == granted, (title, listed - granted)
