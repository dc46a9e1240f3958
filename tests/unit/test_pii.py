from rag_core.pii import redact


def test_each_kind_is_redacted_and_counted():
    text = (
        "Write to jane.doe@example.com or call +1 415-555-2671. Card 4111 1111 1111 1111, "
        "SSN 078-05-1121, IBAN GB82 WEST 1234 5698 7654 32, AWS key AKIAIOSFODNN7EXAMPLE, "
        "token ghp_1234567890abcdefghijklmnopqrstuvwxyzAB."
    )
    redacted, counts = redact(text)
    assert counts == {"email": 1, "phone": 1, "card": 1, "national_id": 1, "iban": 1, "secret": 2}
    for secret in ("jane.doe", "415-555", "4111", "078-05", "GB82", "AKIA", "ghp_", "yzAB"):
        assert secret not in redacted
    assert redacted.startswith("Write to [REDACTED_EMAIL] or call [REDACTED_PHONE].")


def test_scientific_numbers_are_not_mistaken_for_pii():
    text = (
        "In 2019, n=2345678 patients (95% CI 1.2-3.4, p<0.05) received 4111 mg; "
        "HR 0.82 [0.71-0.95]; ISBN 978-3-16-148410-0; reference 123-45-678."
    )
    redacted, counts = redact(text)
    assert counts == {}
    assert redacted == text


def test_invalid_checksums_are_kept():
    redacted, counts = redact("card 4111 1111 1111 1112 and SSN 000-12-3456")
    assert counts == {}
    assert "4111 1111 1111 1112" in redacted
