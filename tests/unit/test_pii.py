import pytest

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


RSA_KEY = """-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun
VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK
LxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW/VDL5AaWTg0nLVkjRo
-----END RSA PRIVATE KEY-----"""


def test_a_private_key_is_redacted_from_begin_to_end():
    redacted, counts = redact(f"Deploy key:\n{RSA_KEY}\nRotate it yearly.")
    assert redacted == "Deploy key:\n[REDACTED_SECRET]\nRotate it yearly."
    assert counts == {"secret": 1}


def test_a_private_key_cut_off_before_its_end_line_loses_its_body():
    excerpt = RSA_KEY.rsplit("\n", 1)[0]  # a chunk that ends inside the block
    redacted, _ = redact(f"{excerpt}\n\nNext section.")
    assert "MIIE" not in redacted and "LxoS" not in redacted and redacted.endswith("Next section.")


@pytest.mark.parametrize(
    "line",
    [
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "The secret access key is wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY, keep it safe.",
        'aws_secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"',
    ],
)
def test_an_aws_secret_access_key_is_found_by_its_name(line):
    redacted, counts = redact(line)
    assert "wJalrXUtnFEMI" not in redacted and "EXAMPLEKEY" not in redacted
    assert counts == {"secret": 1}


def test_a_40_character_token_without_a_secret_name_is_kept():
    text = "Commit 9fceb02d0ae598e95dc970b74767f19372d61af8 fixed the build."
    assert redact(text) == (text, {})


@pytest.mark.parametrize(
    "card", ["4111.1111.1111.1111", "4111 1111 1111 1111", "4111-1111-1111-1111", "3782.822463.10005"]
)
def test_cards_separated_by_dots_spaces_or_dashes_are_redacted(card):
    redacted, counts = redact(f"Paid with {card}.")
    assert redacted == "Paid with [REDACTED_CARD]." and counts == {"card": 1}


def test_a_dotted_number_failing_luhn_is_kept():
    assert redact("ref 4111.1111.1111.1112") == ("ref 4111.1111.1111.1112", {})


@pytest.mark.parametrize(
    "spelled",
    [
        "jane dot doe at example dot com",
        "Jane.Doe AT example DOT co DOT uk",
        "jane (at) example (dot) org",
        "jane[@]example[.]com",
    ],
)
def test_an_email_spelled_out_with_words_is_redacted(spelled):
    redacted, counts = redact(f"Mail {spelled} for access.")
    assert redacted == "Mail [REDACTED_EMAIL] for access." and counts == {"email": 1}


def test_ordinary_text_is_untouched():
    text = (
        "Upgrade from 1.2.3.4 to 10.20.30.40 (released 2024-01-15, 15.01.2024 or 01/15/2024) before "
        "12.05.2025. It costs $1,234.56, €1.234,56 or 1 234 567.89 in total; pi is 3.14159265358979. "
        "Server 192.168.100.200 at 12:30. The docs are online at docs dot python dot org. "
        "We meet at noon, look at the results, and arrive at the office."
    )
    assert redact(text) == (text, {})
