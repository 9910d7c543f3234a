"""Generators for the NIR guard's tests: valid NIRs in every spelling the guard must catch,
placed inside random text, and the realistic pseudonyms and codes it must never flag.

The spelling generator knows the rule only from its statement (docs/guarantees.md, P10):
groups 1-2-2-2-3-3-2, any run of separators between groups, not glued to a digit, not part
of a hash or a hex identifier. It does not call the code under test.
"""

from __future__ import annotations

import base64
import random
import uuid
from collections.abc import Iterator

from hypothesis import strategies as st

# Every separator the guard accepts between groups, as people and forms write them.
SEPARATORS = (
    " ",
    "\t",
    "\n",
    "\r\n",
    "\u00a0",  # no-break space
    "\u2009",  # thin space
    "\u202f",  # narrow no-break space
    "\u3000",  # ideographic space
    ".",
    "-",
    "/",
    "_",
    "\u2013",  # en dash
    "\u2011",  # non-breaking hyphen
    "\u200b",  # zero-width space
    "\u00ad",  # soft hyphen
)
_MONTHS = [*range(1, 13), 20, *range(30, 43), *range(50, 100)]
_DEPARTMENTS = [f"{n:02d}" for n in range(1, 100)] + ["2A", "2B", "2a", "2b"]
_HEX = frozenset("0123456789abcdefABCDEF-")


def nir_groups(sex: str, year: int, month: int, dept: str, commune: int, order: int) -> list[str]:
    """The seven groups of a NIR, its key computed (2A -> 19, 2B -> 18)."""
    numeric = {"2A": "19", "2B": "18"}.get(dept.upper(), dept)
    number = int(f"{sex}{year:02d}{month:02d}{numeric}{commune:03d}{order:03d}")
    key = 97 - number % 97
    return [
        sex,
        f"{year:02d}",
        f"{month:02d}",
        dept,
        f"{commune:03d}",
        f"{order:03d}",
        f"{key:02d}",
    ]


@st.composite
def nir_groups_strategy(draw: st.DrawFn) -> list[str]:
    return nir_groups(
        draw(st.sampled_from("123478")),
        draw(st.integers(0, 99)),
        draw(st.sampled_from(_MONTHS)),
        draw(st.sampled_from(_DEPARTMENTS)),
        draw(st.integers(0, 999)),
        draw(st.integers(0, 999)),
    )


# Between two groups: nothing, or a run of 1-4 separators of any mix.
_GAP = st.one_of(
    st.just(""),
    st.lists(st.sampled_from(SEPARATORS), min_size=1, max_size=4).map("".join),
)


@st.composite
def nir_spellings(draw: st.DrawFn) -> str:
    """A valid NIR in a random spelling: each gap between groups empty or a random run of
    separators (so also the 13 characters then the key, and everything glued)."""
    groups = draw(nir_groups_strategy())
    gaps = [draw(_GAP) for _ in range(6)]
    return groups[0] + "".join(gap + group for gap, group in zip(gaps, groups[1:], strict=True))


def wrong_key(spelled: str) -> str:
    """The same spelling with another key (the last two characters are the key)."""
    key = int(spelled[-2:])
    return spelled[:-2] + f"{key % 97 + 1:02d}"


def _trailing_hex(text: str) -> int:
    count = 0
    for char in reversed(text):
        if char not in _HEX:
            break
        count += 1
    return count


def _leading_hex(text: str) -> int:
    count = 0
    for char in text:
        if char not in _HEX:
            break
        count += 1
    return count


def embed(before: str, nir: str, after: str) -> tuple[str, int]:
    """``before + nir + after``, with a letter 'g' put against the NIR where its neighbour is
    an ASCII digit (a NIR is not glued to digits) or where the hex digits and hyphens around
    it would reach 32 characters (a hash or a hex identifier); and where the NIR starts."""
    if before and before[-1].isascii() and before[-1].isdigit():
        before += "g"
    if after and after[0].isascii() and after[0].isdigit():
        after = "g" + after
    if _trailing_hex(before) + len(nir) + _leading_hex(after) >= 32:
        before += "g" if _trailing_hex(before) else ""
        after = ("g" if _leading_hex(after) else "") + after
    return before + nir + after, len(before)


# Text around a NIR: anything, letters of every kind glued (hex ones included), punctuation.
SURROUNDINGS = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="abcdefABCDEFxyzNIR:#(=[ -_./0123456789é\u00a0", max_size=40),
)


@st.composite
def nir_in_text(draw: st.DrawFn) -> tuple[str, str, int]:
    """(text, the NIR as spelled in it, where it starts)."""
    nir = draw(nir_spellings())
    text, start = embed(draw(SURROUNDINGS), nir, draw(SURROUNDINGS))
    return text, nir, start


# --- what must never be flagged ---------------------------------------------------------------


def _ean13(first12: str) -> str:
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(first12))
    return first12 + str((10 - total % 10) % 10)


def realistic_values(seed: int, count: int) -> Iterator[tuple[str, str]]:
    """(form, value) of ``count`` seeded pseudonyms and codes, in the forms in use: 64- and
    32-hex pseudonyms, UUIDs (either case), base64url pseudonyms of 32 and 16 bytes, W3C
    traceparent headers, CIP13 drug codes, ATC codes, CCAM act codes and amounts written
    as people write them."""
    rng = random.Random(seed)
    forms = (
        ("hex64", 30),
        ("hex32", 10),
        ("uuid", 20),
        ("base64url", 20),
        ("traceparent", 4),
        ("cip13", 4),
        ("atc", 4),
        ("ccam", 4),
        ("amount", 4),
    )
    names = [name for name, weight in forms for _ in range(weight)]
    for _ in range(count):
        form = rng.choice(names)
        if form == "hex64":
            value = f"{rng.getrandbits(256):064x}"
        elif form == "hex32":
            value = f"{rng.getrandbits(128):032x}"
        elif form == "uuid":
            value = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            value = value.upper() if rng.random() < 0.1 else value
        elif form == "base64url":
            raw = rng.randbytes(32 if rng.random() < 0.7 else 16)
            value = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        elif form == "traceparent":
            trace, span = rng.getrandbits(128), rng.getrandbits(64)
            value = f"00-{trace:032x}-{span:016x}-{rng.choice(['00', '01'])}"
        elif form == "cip13":
            value = _ean13("3400" + f"{rng.randrange(10**8):08d}")
        elif form == "atc":
            value = (
                rng.choice("ABCDGHJLMNPRSV")
                + f"{rng.randrange(100):02d}"
                + "".join(rng.choice("ABCDEFGHJKLMNPQRSTVX") for _ in range(2))
                + f"{rng.randrange(100):02d}"
            )
        elif form == "ccam":
            value = "".join(rng.choice("ABCDEFGHJKLMNPQRSTVZ") for _ in range(4))
            value += f"{rng.randrange(1000):03d}"
        else:
            cents = rng.randrange(10 ** rng.randint(1, 12))
            euros, rest = divmod(cents, 100)
            value = rng.choice(
                [
                    f"{cents}",
                    f"{euros}.{rest:02d}",
                    f"{euros:,}".replace(",", " ") + f",{rest:02d} €",
                    f"{euros:,}".replace(",", ".") + f",{rest:02d}",
                    f"EUR {euros:_}.{rest:02d}",
                ]
            )
        yield form, value


def random_spelling(rng: random.Random) -> str:
    """A valid NIR in a random spelling (the plain-random twin of ``nir_spellings``)."""
    groups = nir_groups(
        rng.choice("123478"),
        rng.randrange(100),
        rng.choice(_MONTHS),
        rng.choice(_DEPARTMENTS),
        rng.randrange(1000),
        rng.randrange(1000),
    )
    out = groups[0]
    for group in groups[1:]:
        if rng.random() < 0.7:
            out += "".join(rng.choice(SEPARATORS) for _ in range(rng.randint(1, 3)))
        out += group
    return out
