"""Deterministic synthetic CRM rows: the demo data in `data/` and the benchmark input.

Most rows are plain German or English contacts. A planned, exact share of rows carries one edge
case each (`SINGLE_CASES`), and small groups of rows share one address (`DUPLICATE_CASES`), so
eligibility meets every kind of bad input a real CRM holds. Only `random.Random(seed)` is used.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import permutations
from typing import Any

from newsletter_pipelines.crm.schema import CONTACT_FIELDS

Row = dict[str, Any]
Mutator = Callable[[Row, random.Random], None]

CONTACT_COLUMNS = CONTACT_FIELDS
TAG_COLUMNS = ("contact_id", "tag")


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_START = datetime(2015, 1, 1)
_SPAN = int((datetime(2025, 6, 30) - _START).total_seconds())

GERMAN_MALE = _words(
    "Thomas Michael Andreas Stefan Markus Christian Jürgen Klaus Jörg Uwe Lukas Jonas Felix "
    "Maximilian Paul Tobias Sebastian Matthias Frank Günter Björn Sören Wolfgang Dieter"
)
GERMAN_FEMALE = _words(
    "Sabine Petra Claudia Andrea Susanne Anna Julia Katharina Laura Lena Sophie Marie Monika "
    "Ursula Birgit Käthe Jana Hannah Lea Sarah Bärbel Renate Gisela Christiane"
)
GERMAN_LAST = (
    *_words(
        "Müller Schmidt Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Schäfer Koch "
        "Bauer Richter Klein Wolf Schröder Neumann Schwarz Zimmermann Braun Krüger Hartmann Lange "
        "Werner Krause Lehmann Köhler Herrmann König Walter Huber Kaiser Fuchs Peters Scholz "
        "Möller Weiß Jung Hahn Vogel Keller Günther Berger Böhm Jäger Groß Brandt Haas Dietrich"
    ),
    "von Bergen",
    "Müller-Lüdenscheidt",
    "zu Salm",
    "Schmidt-Ott",
)
ENGLISH_MALE = _words(
    "James John Robert Michael William David Richard Joseph Thomas Charles Daniel Matthew "
    "Oliver George Harry Jack Edward Henry Samuel Benjamin"
)
ENGLISH_FEMALE = _words(
    "Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Emily Olivia "
    "Amelia Charlotte Sophie Grace Emma Chloe Lucy Hannah"
)
ENGLISH_LAST = (
    *_words(
        "Smith Johnson Williams Brown Jones Miller Davis Wilson Taylor Anderson Thomas Moore "
        "Jackson White Harris Clark Lewis Walker Hall Young King Wright Green Baker Evans Roberts "
        "Turner Murphy Hughes Edwards Cooper Ward Morris Bell Cook"
    ),
    "O'Brien",
    "O'Connor",
    "Smith-Jones",
    "McDonald",
)

UMLAUT_FIRST = ("Jürgen", "Jörg", "Günter", "Käthe", "Björn", "Sören", "Bärbel", "Müjde")
UMLAUT_LAST = ("Müller", "Schäfer", "Krüger", "Köhler", "Böhm", "Jäger", "Möller", "König")

GERMAN_DOMAINS = ("example.de", "beispiel.de", "example.com", "mail.example.net", "example.org")
ENGLISH_DOMAINS = ("example.com", "example.org", "mail.example.net", "example.net")
IDN_DOMAINS = ("bücher.de", "häuser.example.de", "straße.example.com", "café.example.org")
_DECOMPOSABLE = tuple(d for d in IDN_DOMAINS if unicodedata.normalize("NFD", d) != d)
EMOJIS = ("😀", "🏠", "🎉", "❤️", "👍", "🐻")

ROLE_TAGS = ("Käufer", "Verkäufer", "Mieter", "Vermieter", "Investor", "Eigentümer", "Interessent")
NEWSLETTER_TAGS = {True: "Newsletter DE", False: "Newsletter EN"}

SQL_TEXTS = (
    "Robert'); DROP TABLE contacts;--",
    "x' OR '1'='1",
    'Anna"; DELETE FROM contact_tags; --',
)
PLAIN_TEXTS = ("keine Angabe", "n/a", "siehe Firma", "folgt", "unknown", "bitte nicht anschreiben")

_TRANSLIT = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "é": "e", "'": "", " ": ""})
_PATTERNS: tuple[Callable[[str, str], str], ...] = (
    lambda f, last: f"{f}.{last}",
    lambda f, last: f"{f}.{last}",
    lambda f, last: f"{f}.{last}",
    lambda f, last: f"{f[0]}.{last}",
    lambda f, last: f"{f}{last}",
    lambda f, last: f"{last}.{f}",
    lambda f, last: f"{f}_{last}",
    lambda f, last: f"{f[0]}{last}",
    lambda f, last: last,
)


def _ascii(name: str) -> str:
    return name.lower().translate(_TRANSLIT)


@dataclass(frozen=True)
class _Pool:
    """Names (with their email form), domains and salutations of one language and gender."""

    firsts: tuple[tuple[str, str], ...]
    lasts: tuple[tuple[str, str], ...]
    domains: tuple[str, ...]
    titles: tuple[str, str, str]


def _pool(
    firsts: tuple[str, ...],
    lasts: tuple[str, ...],
    domains: tuple[str, ...],
    titles: tuple[str, str, str],
) -> _Pool:
    return _Pool(
        tuple((n, _ascii(n)) for n in firsts), tuple((n, _ascii(n)) for n in lasts), domains, titles
    )


# (german, female) -> pool
_POOLS = {
    (True, True): _pool(GERMAN_FEMALE, GERMAN_LAST, GERMAN_DOMAINS, ("Frau", "Frau", "Frau")),
    (True, False): _pool(GERMAN_MALE, GERMAN_LAST, GERMAN_DOMAINS, ("Herr", "Herr", "Herr")),
    (False, True): _pool(ENGLISH_FEMALE, ENGLISH_LAST, ENGLISH_DOMAINS, ("Mrs", "Ms", "Ms")),
    (False, False): _pool(ENGLISH_MALE, ENGLISH_LAST, ENGLISH_DOMAINS, ("Mr", "Mr", "Mr")),
}
_TAG_PICKS = {k: tuple(permutations(ROLE_TAGS, k)) for k in (1, 2, 3)}


def _stamp(seconds: int) -> str:
    return (_START + timedelta(seconds=seconds)).isoformat(" ")


def _salutation(r: float, titles: tuple[str, str, str]) -> str:
    """90 % the gendered title, then Dr., empty, and Divers."""
    if r < 0.9:
        return titles[int(r * 3)]
    return "Dr." if r < 0.95 else "" if r < 0.99 else "Divers"


def email_key(email: str) -> str:
    """The design's dedupe key, roughly (trim, NFC, lower case): same key, same person."""
    return unicodedata.normalize("NFC", email.strip()).lower()


def _split(row: Row) -> tuple[str, str]:
    local, _, domain = row["email"].rpartition("@")
    return local, domain


def _set_email(template: Callable[[str, str], str]) -> Mutator:
    def mutate(row: Row, rng: random.Random) -> None:
        row["email"] = template(*_split(row))

    return mutate


def _pick(values: tuple[Any, ...], field: str) -> Mutator:
    def mutate(row: Row, rng: random.Random) -> None:
        row[field] = rng.choice(values)

    return mutate


def _private(newsletter: tuple[str, ...]) -> Mutator:
    def mutate(row: Row, rng: random.Random) -> None:
        row["is_private"] = True
        row["newsletter"] = rng.choice(newsletter)

    return mutate


def _upper(row: Row, rng: random.Random) -> None:
    local, domain = _split(row)
    row["email"] = rng.choice((row["email"].upper(), f"{local.title()}@{domain.capitalize()}"))


def _surround(row: Row, rng: random.Random) -> None:
    row["email"] = rng.choice((" {} ", "{} ", "\t{}", "{}\n", "  {}\r\n")).format(row["email"])


def _space_inside(row: Row, rng: random.Random) -> None:
    local, domain = _split(row)
    cut = len(local) // 2
    row["email"] = f"{local[:cut]} {local[cut:]}@{domain}"


def _emoji_domain(row: Row, rng: random.Random) -> None:
    row["email"] = f"{_split(row)[0]}@{rng.choice(EMOJIS)}.example.de"


def _emoji_local(row: Row, rng: random.Random) -> None:
    local, domain = _split(row)
    row["email"] = f"{local}{rng.choice(EMOJIS)}@{domain}"


def _quoted(row: Row, rng: random.Random) -> None:
    name = f"{row['first_name']} {row['last_name']}".lower()
    row["email"] = f'"{name}"@{_split(row)[1]}'


def _ip_literal(row: Row, rng: random.Random) -> None:
    row["email"] = f"{_split(row)[0]}@[192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}]"


def _plain_text(row: Row, rng: random.Random) -> None:
    row["email"] = rng.choice((*PLAIN_TEXTS, f"{row['first_name']} {row['last_name']}"))


def _idn_local(row: Row, rng: random.Random) -> None:
    row["first_name"], row["last_name"] = rng.choice(UMLAUT_FIRST), rng.choice(UMLAUT_LAST)
    local = f"{row['first_name']}.{row['last_name']}".lower()
    row["email"] = f"{local}{row['id']}@{rng.choice(IDN_DOMAINS)}"


def _idn_domain(row: Row, rng: random.Random) -> None:
    row["email"] = f"{_split(row)[0]}@{rng.choice(IDN_DOMAINS)}"


def _long_name(row: Row, rng: random.Random) -> None:
    field = rng.choice(("first_name", "last_name"))
    row[field] = ((row[field] + " ") * 10_000)[:10_000]


def _nul_name(row: Row, rng: random.Random) -> None:
    field = rng.choice(("first_name", "last_name"))
    row[field] = f"{row[field][:2]}\x00{row[field][2:]}"


def _emoji_name(row: Row, rng: random.Random) -> None:
    row["first_name"] = f"{row['first_name']} {rng.choice(EMOJIS)}"


def _newline_name(row: Row, rng: random.Random) -> None:
    row["last_name"] = rng.choice(("{}\nGmbH & Co. KG", "{}\r\nc/o Hausverwaltung", "\n{}")).format(
        row["last_name"]
    )


def _names_none(row: Row, rng: random.Random) -> None:
    row["salutation"] = row["first_name"] = row["last_name"] = None


def _all_none(row: Row, rng: random.Random) -> None:
    for column in CONTACT_COLUMNS[1:]:
        row[column] = None


def _set(field: str, value: Any) -> Mutator:
    def mutate(row: Row, rng: random.Random) -> None:
        row[field] = value

    return mutate


# case name -> (share of all contacts, mutation of a plain row); counts are round(share * n).
SINGLE_CASES: dict[str, tuple[float, Mutator]] = {
    "private_newsletter_yes": (0.012, _private(("yes",))),
    "private_other": (0.008, _private(("no", "unspecified"))),
    "email_null": (0.015, _set("email", None)),
    "email_empty": (0.004, _set("email", "")),
    "email_whitespace_only": (0.002, _pick((" ", "   ", "\t", " \n"), "email")),
    "invalid_email_space_inside": (0.0015, _space_inside),
    "invalid_email_multiple_at": (0.001, _set_email(lambda lo, d: f"{lo}@home@{d}")),
    "invalid_email_trailing_dot": (0.001, _set_email(lambda lo, d: f"{lo}@{d}.")),
    "invalid_email_no_dot_domain": (0.001, _set_email(lambda lo, d: f"{lo}@{d.split('.')[0]}")),
    "invalid_email_quoted_local": (0.001, _quoted),
    "invalid_email_ip_literal": (0.001, _ip_literal),
    "invalid_email_emoji_domain": (0.001, _emoji_domain),
    "invalid_email_plain_text": (0.002, _plain_text),
    "email_emoji_local": (0.001, _emoji_local),
    "idn_non_ascii_local": (0.002, _idn_local),
    "idn_ascii_local": (0.002, _idn_domain),
    "email_upper_case": (0.01, _upper),
    "email_surrounding_whitespace": (0.005, _surround),
    "newsletter_Ja": (0.001, _set("newsletter", "Ja")),
    "newsletter_YES": (0.001, _set("newsletter", "YES")),
    "newsletter_padded_yes": (0.001, _set("newsletter", " yes ")),
    "newsletter_1": (0.001, _set("newsletter", "1")),
    "newsletter_true": (0.001, _set("newsletter", "true")),
    "newsletter_nein": (0.001, _set("newsletter", "nein")),
    "newsletter_empty": (0.001, _set("newsletter", "")),
    "newsletter_null": (0.002, _set("newsletter", None)),
    "is_private_null": (0.003, _set("is_private", None)),
    "updated_at_null": (0.003, _set("updated_at", None)),
    "created_at_null": (0.001, _set("created_at", None)),
    "name_10000_chars": (0.0008, _long_name),
    "name_nul_byte": (0.001, _nul_name),
    "name_emoji": (0.002, _emoji_name),
    "name_sql": (0.001, _pick(SQL_TEXTS, "last_name")),
    "name_newline": (0.001, _newline_name),
    "names_null": (0.003, _names_none),
    "all_nullable_null": (0.001, _all_none),
}

# Member state in id order: (newsletter, updated_at offset in seconds or None, is_private).
Member = tuple[str, int | None, bool]
_DAY = 86_400


def _two_times(rng: random.Random) -> tuple[int, int]:
    """Offsets of an older and a newer row, at least a day apart."""
    return 0, rng.randint(_DAY, 200 * _DAY)


def _newer_says(newer: str, older: str) -> Callable[[random.Random], list[Member]]:
    def members(rng: random.Random) -> list[Member]:
        old, new = _two_times(rng)
        pair = [(older, old, False), (newer, new, False)]
        return pair if rng.random() < 0.5 else pair[::-1]

    return members


def _tie(rng: random.Random) -> list[Member]:
    first = rng.choice(("yes", "no"))
    return [(first, 0, False), ("no" if first == "yes" else "yes", 0, False)]


def _triple(rng: random.Random) -> list[Member]:
    offsets = rng.sample(range(0, 300 * _DAY, 3600), 3)
    return [(rng.choice(("yes", "yes", "no", "unspecified")), o, False) for o in offsets]


def _with_private(rng: random.Random) -> list[Member]:
    old, new = _two_times(rng)
    pair = [("yes", old, False), (rng.choice(("yes", "no")), new, True)]
    return pair if rng.random() < 0.5 else pair[::-1]


def _with_null_time(rng: random.Random) -> list[Member]:
    first = rng.choice(("yes", "no"))
    pair = [(first, 0, False), ("no" if first == "yes" else "yes", None, False)]
    return pair if rng.random() < 0.5 else pair[::-1]


def _both_yes(rng: random.Random) -> list[Member]:
    old, new = _two_times(rng)
    return [("yes", old, False), ("yes", new, False)][:: rng.choice((1, -1))]


# case name -> (group size, groups per contact, member states in id order).
DUPLICATE_CASES: dict[str, tuple[int, float, Callable[[random.Random], list[Member]]]] = {
    "duplicate_case_whitespace": (2, 0.003, _both_yes),
    "duplicate_newer_no": (2, 0.002, _newer_says("no", "yes")),
    "duplicate_newer_yes": (2, 0.001, _newer_says("yes", "no")),
    "duplicate_updated_at_tie": (2, 0.001, _tie),
    "duplicate_triple": (3, 0.001, _triple),
    "duplicate_private_member": (2, 0.001, _with_private),
    "duplicate_updated_at_null": (2, 0.001, _with_null_time),
    "duplicate_unicode_nfd": (2, 0.001, _both_yes),
}


def _plan(n: int, rng: random.Random) -> dict[int, tuple[str, int, int]]:
    """Contact id -> (case, group number, member index) for every row that carries a case."""
    sizes = [(name, 1, round(share * n)) for name, (share, _) in SINGLE_CASES.items()]
    sizes += [(name, size, round(share * n)) for name, (size, share, _) in DUPLICATE_CASES.items()]
    needed = sum(size * count for _, size, count in sizes)
    if needed > n:
        raise ValueError(f"{n} contacts are too few for the edge cases ({needed} rows)")
    ids = iter(rng.sample(range(1, n + 1), needed))
    plan: dict[int, tuple[str, int, int]] = {}
    group = 0
    for name, size, count in sizes:
        for _ in range(count):
            group += 1
            for member, contact_id in enumerate(sorted(next(ids) for _ in range(size))):
                plan[contact_id] = (name, group, member)
    return plan


def case_plan(n_contacts: int, seed: int = 42) -> dict[str, list[int]]:
    """Case name -> contact ids carrying it (all members for duplicate groups), as generated."""
    cases: dict[str, list[int]] = {name: [] for name in (*SINGLE_CASES, *DUPLICATE_CASES)}
    for contact_id, (name, _, _) in sorted(_plan(n_contacts, random.Random(seed)).items()):
        cases[name].append(contact_id)
    return cases


def _variant(email: str, rng: random.Random) -> str:
    """The same address differing only in case or surrounding whitespace."""
    local, _, domain = email.partition("@")
    return rng.choice(
        (
            email.upper(),
            f"{local.title()}@{domain}",
            f" {email}",
            f"{email} ",
            f"\t{email.upper()} ",
            f"{local.capitalize()}@{domain.upper()}",
        )
    )


class _Generator:
    """Row-by-row state: the random stream, the case plan, addresses used, open duplicate groups."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.rng = random.Random(seed)
        self.plan = _plan(n, self.rng)
        self.used: set[str] = set()
        self.groups: dict[int, tuple[dict[str, str], list[Member], int]] = {}

    def plain(self, contact_id: int) -> tuple[Row, bool]:
        """A plain, eligible-looking contact and whether it is German."""
        rnd = self.rng.random
        german = rnd() < 0.65
        pool = _POOLS[german, rnd() < 0.5]
        first, first_ascii = pool.firsts[int(rnd() * len(pool.firsts))]
        last, last_ascii = pool.lasts[int(rnd() * len(pool.lasts))]
        local = _PATTERNS[int(rnd() * len(_PATTERNS))](first_ascii, last_ascii)
        domain = pool.domains[int(rnd() * len(pool.domains))]
        email = f"{local}@{domain}"
        if email in self.used:  # plain addresses are lower-case ASCII: the address is the key
            email = f"{local}{contact_id}@{domain}"  # names hold no digits, so this is unique
        self.used.add(email)
        r = rnd()
        newsletter = "yes" if r < 0.75 else "no" if r < 0.87 else "unspecified"
        created = int((contact_id / self.n * 0.99 + rnd() * 0.01) * _SPAN)
        updated = created + int(rnd() ** 2 * (_SPAN - created))
        row = {
            "id": contact_id,
            "salutation": _salutation(rnd(), pool.titles),
            "first_name": first,
            "last_name": last,
            "email": email,
            "newsletter": newsletter,
            "is_private": False,
            "updated_at": _stamp(updated),
            "created_at": _stamp(created),
        }
        return row, german

    def _duplicate(self, row: Row, name: str, group: int, member: int) -> None:
        rng = self.rng
        if member == 0:
            if name == "duplicate_unicode_nfd":  # ASCII local part: valid for every provider
                row["email"] = f"{_split(row)[0]}{row['id']}@{rng.choice(_DECOMPOSABLE)}"
            base = _SPAN - rng.randrange(400 * _DAY)
            source = {f: row[f] for f in ("salutation", "first_name", "last_name", "email")}
            self.groups[group] = (source, DUPLICATE_CASES[name][2](rng), base)
        source, members, base = self.groups[group]
        newsletter, offset, private = members[member]
        if member:
            for field in ("salutation", "first_name", "last_name"):
                row[field] = source[field]
            if name == "duplicate_unicode_nfd":
                row["email"] = unicodedata.normalize("NFD", source["email"])
            else:
                row["email"] = _variant(email_key(source["email"]), rng)
        if member == len(members) - 1:
            del self.groups[group]
        row["newsletter"], row["is_private"] = newsletter, private
        row["updated_at"] = None if offset is None else _stamp(base - 300 * _DAY + offset)
        if row["updated_at"] is not None and row["created_at"] > row["updated_at"]:
            row["created_at"] = row["updated_at"]

    def tags(self, contact_id: int, german: bool) -> list[Row]:
        """0 to 3 distinct tags."""
        rng = self.rng
        r = rng.random()
        k = 0 if r < 0.35 else 1 if r < 0.7 else 2 if r < 0.9 else 3
        if not k:
            return []
        picks = _TAG_PICKS[k]
        chosen = list(picks[int(rng.random() * len(picks))])
        if rng.random() < 0.5:
            chosen[0] = NEWSLETTER_TAGS[german]
        if rng.random() < 0.04:
            chosen[-1] = "VIP"
        return [{"contact_id": contact_id, "tag": tag} for tag in chosen]

    def rows(self) -> Iterator[tuple[Row, list[Row]]]:
        for contact_id in range(1, self.n + 1):
            row, german = self.plain(contact_id)
            case = self.plan.get(contact_id)
            if case is not None:
                name, group, member = case
                if name in SINGLE_CASES:
                    SINGLE_CASES[name][1](row, self.rng)
                else:
                    self._duplicate(row, name, group, member)
            yield row, self.tags(contact_id, german)


def iter_crm(n_contacts: int, seed: int = 42) -> Iterator[tuple[Row, list[Row]]]:
    """Contact rows in id order, each with its tag rows; the same seed gives the same rows."""
    return _Generator(n_contacts, seed).rows()


def generate_crm(n_contacts: int, seed: int = 42) -> tuple[list[Row], list[Row]]:
    """All contact rows and all tag rows of `n_contacts` synthetic contacts."""
    contacts: list[Row] = []
    tags: list[Row] = []
    for row, row_tags in iter_crm(n_contacts, seed):
        contacts.append(row)
        tags.extend(row_tags)
    return contacts, tags
