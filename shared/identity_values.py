"""How identity values are checked and normalized where more than one service needs the same answer: the identity
service normalizes with these, and the gateway refuses at ingest what they would refuse later."""

from __future__ import annotations

import phonenumbers


def normalize_phone(value: str, region: str) -> str:
    """E.164 ('+' and digits); a national number takes the region's country code. Raises ValueError naming the
    problem (the value itself is never repeated)."""
    if not value:
        return ""
    try:
        number = phonenumbers.parse(value, region or None)
    except phonenumbers.NumberParseException:
        raise ValueError(f"is not a phone number (region {region or 'none'})") from None
    if not phonenumbers.is_possible_number(number):
        raise ValueError("is not a possible phone number (wrong length)")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
