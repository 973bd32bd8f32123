"""A check, its verdict and fix, and the collector that turns a failing check into a line, never a traceback."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Literal

import psycopg

from cachelib.errors import CacheError

Status = Literal["pass", "fail", "skipped"]
GROUPS = ("environment", "database", "operations", "api", "dashboard")
READ_ONLY_REASON = "read-only: pass --allow-writes"


@dataclass
class Check:
    name: str
    group: str
    status: Status
    detail: str = ""
    fix: str | None = None
    required: bool = True

    @property
    def failed(self) -> bool:
        return self.status == "fail" and self.required

    def line(self) -> str:
        """One line: the mark, group and name, what was found, and the fix for a failure."""
        if self.status == "pass":
            return f"✓ {self.group}: {self.name} — {self.detail}"
        if self.status == "skipped":
            text = f"– {self.group}: {self.name} — skipped: {self.detail}"
            return text + (f" (instead: {self.fix})" if self.fix else "")
        optional = "" if self.required else " (not required)"
        return f"✗ {self.group}: {self.name}{optional} — {self.detail}" + (f" — fix: {self.fix}" if self.fix else "")

    def to_dict(self) -> dict:
        return asdict(self)


def all_required_pass(checks: Iterable[Check]) -> bool:
    return not any(check.failed for check in checks)


def summary(checks: list[Check]) -> str:
    counts = {s: sum(c.status == s for c in checks) for s in ("pass", "fail", "skipped")}
    required = sum(c.failed for c in checks)
    verdict = "all required checks pass" if required == 0 else f"{required} required check(s) failed"
    return (f"verify: {counts['pass']} passed, {counts['fail']} failed, {counts['skipped']} skipped — {verdict}")


class Run:
    """Collects checks; a check that raises becomes a failure naming the error, never a traceback."""

    def __init__(self):
        self.checks: list[Check] = []

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def guarded(self, group: str, name: str, func: Callable[[], Check | list[Check]], *, required: bool = True,
                fix: str | None = None) -> None:
        try:
            result = func()
        except (psycopg.Error, CacheError, OSError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.add(Check(name, group, "fail", f"{type(exc).__name__}: {text}", fix, required))
            return
        for check in result if isinstance(result, list) else [result]:
            self.add(check)

