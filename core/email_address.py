"""The one spelling of an email address, for both halves: what is stored, compared and hashed."""

import unicodedata

from email_validator import validate_email

# RFC 5321, 4.5.3.1.1: the part before the "@" is at most 64 octets (UTF-8 bytes, RFC 6531).
MAX_LOCAL_PART_OCTETS = 64


def normalize_email(raw: str) -> str:
    """The one spelling of an email address: what is stored and what the workflow ID hashes.

    Equivalent spellings of one mailbox must give one ID, or the duplicate rule
    is walked around. The rule (README, "What the API accepts"):
    1. strip surrounding whitespace;
    2. Unicode NFKC: canonical equivalents (precomposed "é" and "e" + U+0301)
       and compatibility variants (fullwidth "ｊｏｈｎ＠…", ligatures like "ﬁ")
       become one string; no mail provider tells these apart, they only fool a
       byte comparison;
    3. lower-case the whole address, the part before the "@" too: the product
       already treats John@x and john@x as one applicant. `str.lower`, not
       `casefold` (which makes "straße" "strasse", a mailbox a provider may keep
       apart), except that the dotted capital "İ" becomes "i": its default lower
       case is "i" + a combining dot above (U+0307), a spelling no mailbox uses,
       while a Turkish keyboard types "İ" for the capital of "i";
    4. NFKC again: lower-casing can leave a string that is no longer NFKC;
    5. email-validator checks the syntax (no DNS look-up: validation must not
       depend on the network) and puts the domain through IDNA (UTS-46), so
       "BÜCHER.de" and "xn--bcher-kva.de" both give "bücher.de"; the part before
       the "@" may have at most 64 octets (RFC 5321).
    ASCII addresses come out as before (trimmed, lower-cased), so their workflow IDs do not change.
    Provider-specific aliases (plus tags, Gmail's dots) are not folded: they are
    different mailboxes to the mail system. Idempotent, so normalising twice is safe.
    Raises ValueError (email_validator.EmailNotValidError) for an invalid address.
    """
    composed = unicodedata.normalize("NFKC", raw.strip())
    folded = unicodedata.normalize("NFKC", composed.replace("\u0130", "i").lower())
    checked = validate_email(folded, check_deliverability=False)
    if len(checked.local_part.encode("utf-8")) > MAX_LOCAL_PART_OCTETS:
        raise ValueError(f"the part before the @ has more than {MAX_LOCAL_PART_OCTETS} octets")
    return f"{checked.local_part}@{checked.domain}"
