"""bench.address_changes at small sizes: it measures what it says (well under 2 s)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import address_changes
from detectors import expiry


@pytest.mark.python_core
def test_both_modes_run_and_the_uncapped_one_lifts_the_budget_only_while_it_runs(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    budget = expiry.CHANGES_BYTES
    assert address_changes.main(["--changes", "200", "400", "--runs", "1", "--json", str(out)]) == 0
    assert budget == expiry.CHANGES_BYTES
    rows = {(r["mode"], r["changes"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {(m, n) for m in ("uncapped", "capped") for n in (200, 400)}
    for n in (200, 400):
        uncapped, capped = rows[("uncapped", n)], rows[("capped", n)]
        assert uncapped["log_length"] == uncapped["holding_addresses"] == n + 1
        assert uncapped["addresses_indexed"] == n + 1 and uncapped["changes_capped"] == 0
        assert capped["log_length"] + capped["changes_capped"] == n + 1
    assert rows[("capped", 400)]["changes_capped"] > 0  # past the budget
    assert rows[("uncapped", 400)]["ratio_of_changes"] == 2
