import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.holdings import (
    CONTRACT_ENDED,
    CONTRACT_STARTED,
    EMAIL_CHANGED,
    EMAIL_VERIFIED,
    HOLDER_CHANGED,
    PORTED_IN,
    PORTED_OUT,
    SUPERSEDED,
    Change,
    active_at,
    derive,
    derive_next,
)
from detectors.state import NumberState

A, B, C = b"a" * 12, b"b" * 12, b"c" * 12


def log(*changes: Change) -> list[Change]:
    state = NumberState()
    for ch in changes:
        state.add_change(ch)
    return state.changes


def test_start_end_and_boundaries():
    hs = derive(log(Change(10, CONTRACT_STARTED, "s", "K", "C1", "o2", A), Change(20, CONTRACT_ENDED, "e", "K")))
    assert len(hs) == 1
    assert active_at(hs, 9) is None
    assert active_at(hs, 10) is hs[0]  # started at or before t
    assert active_at(hs, 19) is hs[0]
    assert active_at(hs, 20) is None  # ended at or before t
    assert hs[0].current_address(15) == A


def test_holder_change_starts_a_holding_without_address():
    hs = derive(
        log(
            Change(10, CONTRACT_STARTED, "s", "K", "C1", "o2", A),
            Change(20, HOLDER_CHANGED, "h", "K", "C2"),
        )
    )
    assert [(h.customer_id, h.start, h.end) for h in hs] == [("C1", 10, 20), ("C2", 20, None)]
    assert hs[1].current_address(25) is None
    assert hs[1].brand == "o2"


def test_same_instant_holder_change_and_new_address_in_any_insertion_order():
    changes = [
        Change(20, EMAIL_CHANGED, "c", "K", addr=B),
        Change(20, HOLDER_CHANGED, "h", "K", "C2"),
        Change(10, CONTRACT_STARTED, "s", "K", "C1", "o2", A),
    ]
    for order in (changes, changes[::-1]):
        hs = derive(log(*order))
        assert hs[1].customer_id == "C2" and hs[1].current_address(20) == B
        assert hs[0].current_address(20) == A


def test_address_history_and_links():
    hs = derive(
        log(
            Change(10, CONTRACT_STARTED, "s", "K", "C1", "o2", A),
            Change(20, EMAIL_CHANGED, "c", "K", addr=B),
            Change(20, EMAIL_VERIFIED, "v", "K", addr=B),
            Change(30, EMAIL_CHANGED, "c2", "K", addr=C),
        )
    )
    h = hs[0]
    assert [h.current_address(t) for t in (10, 19, 20, 29, 30)] == [A, A, B, B, C]
    assert h.linked_since(B, 19) is None
    assert h.linked_since(B, 25).event_id == "c"
    assert h.linked_since(A, 99).t == 10


def test_a_new_start_supersedes_an_open_holding_and_changes_for_other_contracts_are_ignored():
    hs = derive(
        log(
            Change(10, PORTED_IN, "p", "K1", "C1", "o2", A),
            Change(15, EMAIL_CHANGED, "x", "K-OTHER", addr=C),
            Change(20, CONTRACT_STARTED, "s", "K2", "C2", "blau", B),
            Change(25, PORTED_OUT, "o", "K1"),  # K1 is no longer on the number
        )
    )
    assert [(h.contract_id, h.end, h.end_type) for h in hs] == [("K1", 20, SUPERSEDED), ("K2", None, None)]
    assert hs[0].current_address(19) == A


def test_end_and_start_at_the_same_instant():
    hs = derive(
        log(
            Change(20, CONTRACT_STARTED, "s2", "K2", "C2", "o2", B),
            Change(10, CONTRACT_STARTED, "s1", "K1", "C1", "o2", A),
            Change(20, CONTRACT_ENDED, "e1", "K1"),
        )
    )
    assert [(h.contract_id, h.end_type) for h in hs] == [("K1", CONTRACT_ENDED), ("K2", None)]
    assert active_at(hs, 20).contract_id == "K2"


_TYPES = (CONTRACT_ENDED, PORTED_OUT, HOLDER_CHANGED, CONTRACT_STARTED, PORTED_IN, EMAIL_CHANGED, EMAIL_VERIFIED)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 6),
            st.sampled_from(_TYPES),
            st.sampled_from(["K1", "K2"]),
            st.sampled_from(["C1", "C2"]),
            st.sampled_from([None, A, B, C]),
        ),
        max_size=12,
    )
)
def test_derive_next_is_one_step_of_derive(steps):
    """Appending in order and folding one step gives what deriving the whole log gives, and changes nothing shared."""
    log_ = sorted(
        (
            Change(t, type_, f"e{i:02d}", contract, customer, "o2", addr)
            for i, (t, type_, contract, customer, addr) in enumerate(steps)
        ),
        key=Change.sort_key,
    )
    changes: list[Change] = []
    holdings = derive(changes)
    for ch in log_:
        snapshot = [msgspec.structs.asdict(h) for h in holdings]
        before = holdings
        changes.append(ch)
        holdings = derive_next(holdings, ch)
        assert holdings == derive(changes)
        assert [msgspec.structs.asdict(h) for h in before] == snapshot
