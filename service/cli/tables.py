"""Rows printed as aligned columns, for the listing commands."""

from __future__ import annotations

from typing import Any


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(str(r[c] if r[c] is not None else "-")) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c] if row[c] is not None else "-").ljust(widths[c]) for c in columns))
