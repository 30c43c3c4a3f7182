"""One row of a validation battery: a measured figure, the bound it must meet, PASS/FAIL."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class CheckResult:
    """A single check: `value` must satisfy `value <relation> bound` to pass.

    section: group name shown in the table ("closed form", "estimators", "symbolic", ...).
    name: what was measured, in words a reader understands without the code.
    relation: "<=" or ">=".
    detail: how the figure was obtained (probe count, seed, step sizes), shown in --json.
    """

    section: str
    name: str
    value: float
    bound: float
    relation: str = "<="
    detail: str = ""

    @property
    def passed(self) -> bool:
        """value <= bound (or >= for relation ">="); False for a NaN/inf value.

        Raises:
            ValueError: relation other than "<=" or ">=".
        """
        if not math.isfinite(self.value):
            return False
        if self.relation == "<=":
            return self.value <= self.bound
        if self.relation == ">=":
            return self.value >= self.bound
        raise ValueError(f"unknown relation {self.relation!r}; use '<=' or '>='")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict, plus "passed"."""
        d = asdict(self)
        d["passed"] = self.passed
        return d
