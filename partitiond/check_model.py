"""What ``partitiond check`` works with: the facts it reads and the findings it reports.

Shared by the rules about the server (:mod:`partitiond.check`) and about the bands
(:mod:`partitiond.check_bands`); pure data, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from partitiond import access, catalog
from partitiond.lease import LeaseHolder

Severity = Literal["ok", "info", "warning", "critical"]

EXIT_OK = 0
EXIT_WARNING = 1
EXIT_CRITICAL = 2

# Per-relation checks (bounds, names, leftovers...) report at most this many relations each; the rest are
# folded into one finding, so a wrong --band-width on a big database gives a readable report.
MAX_PER_CHECK = 20

META, BLOB = catalog.META, catalog.BLOB


@dataclass(frozen=True, slots=True)
class Finding:
    """One verdict: ``check`` is a stable short name, ``subject`` what it is about."""

    severity: Severity
    check: str
    subject: str
    message: str


@dataclass(frozen=True, slots=True)
class CatalogFact:
    """One row of ``queries/check_facts.sql`` (see that file for the kinds)."""

    kind: str
    relation: str
    name: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything :func:`evaluate` looks at; ``inventory`` is empty when the trees do not exist."""

    schema: str
    state: catalog.ServerState
    inventory: catalog.Inventory = field(default_factory=lambda: catalog.Inventory(l1={}, bands=()))
    positions: Mapping[int, int | None] = field(default_factory=dict)
    extra: tuple[CatalogFact, ...] = ()
    privileges: access.Privileges | None = None  # None: not read
    lease: tuple[LeaseHolder, ...] | None = None  # None: not read; (): nobody holds it

    def of_kind(self, kind: str) -> list[CatalogFact]:
        return [f for f in self.extra if f.kind == kind]


def exit_code(findings: Iterable[Finding]) -> int:
    severities = {f.severity for f in findings}
    if "critical" in severities:
        return EXIT_CRITICAL
    return EXIT_WARNING if "warning" in severities else EXIT_OK


def capped(findings: Iterable[Finding], limit: int = MAX_PER_CHECK) -> list[Finding]:
    """At most ``limit`` findings of one check; the rest become one finding with the worst severity."""
    items = list(findings)
    if len(items) <= limit:
        return items
    rest = items[limit:]
    worst = max((f.severity for f in rest), key=RANK.__getitem__)
    more = Finding(worst, rest[0].check, f"{len(rest):,} more", f"{len(rest):,} more findings like the above")
    return [*items[:limit], more]


RANK: dict[Severity, int] = {"ok": 0, "info": 1, "warning": 2, "critical": 3}
