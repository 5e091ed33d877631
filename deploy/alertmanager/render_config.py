"""Render deploy/alertmanager/alertmanager.yml with the webhook URLs from the environment.

Alertmanager cannot read environment variables, so deployments render a copy:

    NOTIFGUARD_PAGER_URL=https://pager.internal/hook \\
    NOTIFGUARD_TICKET_URL=https://tickets.internal/hook \\
        python3 deploy/alertmanager/render_config.py > alertmanager.yml

Unset variables keep the loopback defaults. Standard library only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

TEMPLATE = Path(__file__).with_name("alertmanager.yml")
DEFAULT_URLS = {
    "NOTIFGUARD_PAGER_URL": "http://127.0.0.1:9095/pager",
    "NOTIFGUARD_TICKET_URL": "http://127.0.0.1:9096/ticket",
}


def render(env: Mapping[str, str] | None = None, replacements: Mapping[str, str] | None = None) -> str:
    """Return the configuration with URLs from ``env`` and any extra literal ``replacements``."""
    env = os.environ if env is None else env
    text = TEMPLATE.read_text(encoding="utf-8")
    for var, default in DEFAULT_URLS.items():
        url = env.get(var) or default
        if any(c in url for c in " \n\"'#"):
            raise ValueError(f"{var}: not a plain URL: {url!r}")
        text = text.replace(f"url: {default}\n", f"url: {url}\n")
    for old, new in (replacements or {}).items():
        if old not in text:
            raise ValueError(f"not in {TEMPLATE.name}: {old!r}")
        text = text.replace(old, new)
    return text


if __name__ == "__main__":
    sys.stdout.write(render())
