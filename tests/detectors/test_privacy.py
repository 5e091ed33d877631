import hmac

from hypothesis import given
from hypothesis import strategies as st

from detectors.privacy import (
    MASK_HIDDEN_DIGITS_MIN,
    MASK_SHOWN_DIGITS_MAX,
    REF_BYTES,
    Pseudonymiser,
    mask_address,
    mask_msisdn,
    normalise_address,
)
from detectors.records import MSISDN_PATTERN
from detectors.settings import Secret, Settings


def test_msisdn_mask_keeps_prefix_and_last_two_digits_and_hides_at_least_six():
    assert mask_msisdn("+4917612345678") == "+49176******78"
    assert mask_msisdn("+4915198765432") == "+49151******32"
    assert mask_msisdn("+491761234") == "+4******34"
    assert mask_msisdn("+12345678") == "+******78"
    assert mask_msisdn("+1234567") == "+******7"
    assert mask_msisdn("+123456789012345") == "+12345********45"


@given(st.from_regex(MSISDN_PATTERN))
def test_msisdn_masks_show_at_most_seven_digits_and_hide_at_least_six(msisdn):
    masked = mask_msisdn(msisdn)
    assert len(masked) == len(msisdn) and masked[0] == "+"
    shown = sum(c.isdigit() for c in masked)
    assert shown <= MASK_SHOWN_DIGITS_MAX and masked.count("*") >= MASK_HIDDEN_DIGITS_MIN
    assert all(m in ("*", c) for m, c in zip(masked, msisdn, strict=True))
    assert not shown or masked.endswith(msisdn[-min(2, shown) :])


def test_address_mask_keeps_first_letter_and_domain():
    assert mask_address("  Jane.Doe@GMX.de ") == "j***@gmx.de"
    assert mask_address("not-an-address") == "n***"
    assert mask_address("@x.de") == "***@x.de"


def test_normalisation_is_trim_and_lower_case_only():
    assert normalise_address("  A.B+c@Gmail.COM\t") == "a.b+c@gmail.com"


def test_a_domain_is_compared_in_its_idna_a_label_form():
    assert normalise_address("anna@gmüx.de") == "anna@xn--gmx-ioa.de"
    assert normalise_address(" Anna@GMÜX.DE ") == "anna@xn--gmx-ioa.de"
    assert normalise_address("anna@xn--gmx-ioa.de") == "anna@xn--gmx-ioa.de"
    assert normalise_address("Jürgen@Bücher.example.") == "jürgen@xn--bcher-kva.example."  # the local part as it is
    p = Pseudonymiser(b"k")
    assert p.address_ref("anna@gmüx.de") == p.address_ref("ANNA@XN--GMX-IOA.DE")
    assert p.address_ref("anna@gmüx.de") != p.address_ref("anna@gmux.de")
    assert mask_address("Anna@GMÜX.de") == mask_address("anna@xn--gmx-ioa.de") == "a***@xn--gmx-ioa.de"


def test_a_domain_idna_rejects_keeps_its_lower_cased_text():
    rejected = ["A@GM☃X.DE", "a@ü..de", "a@" + "ü" * 70 + ".de", "a@xn--zz.dü", "a@-ü.de", "a@u\u0308.de"]
    for address in [*rejected, "nö-at-sign"]:
        assert normalise_address(address) == address.lower()


def test_ascii_domains_skip_idna(monkeypatch):
    import idna

    def refuse(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("IDNA for an ASCII domain")

    monkeypatch.setattr(idna, "encode", refuse)
    assert normalise_address("Jürgen@GMX.de") == "jürgen@gmx.de"
    assert normalise_address("a@xn--zz--.de") == "a@xn--zz--.de"


def test_keyed_hashes_depend_on_the_key_and_on_nothing_but_the_normalised_value():
    a, b = Pseudonymiser(b"k1"), Pseudonymiser(b"k2")
    assert a.address_ref("X@y.de") == a.address_ref(" x@Y.DE ")
    assert a.address_ref("x@y.de") != b.address_ref("x@y.de")
    assert a.msisdn_ref("+4917612345678") == a.msisdn_ref("+4917612345678")
    assert len(a.msisdn_ref("+4917612345678")) == 24
    # domain separation: a number and an address with the same text differ
    assert a.msisdn_ref("+491") != a.address_ref("+491").hex()


def test_secrets_never_show_in_repr():
    s = Settings(pseudonymisation_key=Secret("hunter2-very-secret"))
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.pseudonymisation_key)
    assert "k1" not in repr(Pseudonymiser(b"k1"))


@given(st.binary(min_size=1, max_size=150), st.text(max_size=60))
def test_keyed_hashes_are_hmac_sha256_of_the_domain_and_value(key, value):
    p = Pseudonymiser(key)
    assert p.msisdn_ref(value) == hmac.digest(key, b"msisdn\x00" + value.encode(), "sha256")[:REF_BYTES].hex()
    expected = hmac.digest(key, b"email\x00" + normalise_address(value).encode(), "sha256")[:REF_BYTES]
    assert p.address_ref(value) == expected


def test_a_mask_shows_a_domain_only_when_it_is_a_host_name():
    """Free text after the `@` of a recipient (a name, a phone number) never reaches a summary."""
    from detectors.privacy import mask_address

    assert mask_address("anna@gmx.de, call Anna Schmidt on +4917612345678") == "a***@***"
    assert mask_address("Jane.Doe@GMX.de") == "j***@gmx.de"
    assert mask_address("x@gmüx.de") == "x***@xn--gmx-ioa.de"
    assert mask_address("x@[10.0.0.1]") == "x***@***"
