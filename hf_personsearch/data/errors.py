"""Bad input in raw datasets: fail loudly in strict mode, skip and count otherwise.

A 100k-image dataset always has a few broken files. Users want those skipped, but never silently:
:class:`SkipCounter` counts each skipped item per reason (with the first few locations) and
:meth:`SkipCounter.report` says what was dropped at the end of loading. With ``strict=True`` the first
problem raises :class:`DataFormatError` naming the file (and line) and what was expected.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict

logger = logging.getLogger(__name__)


class DataFormatError(ValueError):
    """A raw annotation or image does not have the documented format."""


class SkipCounter:
    """Counts skipped items per reason; raises instead when ``strict``.

    Args:
        strict: raise on the first problem instead of skipping it.
        max_examples: how many locations to remember per reason for the report (enough to find the
            files without flooding the log).
    """

    def __init__(self, strict: bool = False, max_examples: int = 3):
        self.strict = strict
        self.max_examples = max_examples
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        """Record one skipped item (``where``: file[:line] or image id), or raise when strict."""
        message = f"{where}: {reason}" + (f" ({detail})" if detail else "")
        if self.strict:
            raise DataFormatError(message)
        self.counts[reason] += 1
        if len(self.examples[reason]) < self.max_examples:
            self.examples[reason].append(message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def report(self, name: str = "dataset") -> str:
        """A one-paragraph summary of what was skipped; also logged as a warning when non-empty."""
        if not self.counts:
            return f"{name}: nothing skipped"
        lines = [f"{name}: skipped {self.total} item(s)"]
        for reason, count in self.counts.most_common():
            lines.append(f"  {count} x {reason}, e.g. {'; '.join(self.examples[reason])}")
        text = "\n".join(lines)
        logger.warning(text)
        return text
