"""Write the demo CRM (`contacts.csv`, `contact_tags.csv`) from the synthetic generator.

Run `python data/generate_demo_crm.py [--out DIR]`; the same code always writes the same bytes.
CSV: UTF-8, header row, `csv` module defaults, booleans `true`/`false`, NULL as `\\N`.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from newsletter_pipelines.crm.synthetic import CONTACT_COLUMNS, TAG_COLUMNS, generate_crm

N_CONTACTS = 5000
SEED = 42
NULL = r"\N"


def csv_value(value: Any) -> str:
    """One cell: NULL marker, lower-case booleans, everything else as text."""
    if value is None:
        return NULL
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Write rows with a header row."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows([csv_value(row[c]) for c in columns] for row in rows)


def main(argv: Sequence[str] | None = None) -> None:
    """Generate the demo contacts and tags into `--out` (default: this folder)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    out: Path = parser.parse_args(argv).out
    contacts, tags = generate_crm(N_CONTACTS, seed=SEED)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "contacts.csv", CONTACT_COLUMNS, contacts)
    write_csv(out / "contact_tags.csv", TAG_COLUMNS, tags)
    print(f"wrote {len(contacts)} contacts and {len(tags)} tags to {out}")


if __name__ == "__main__":
    main()
