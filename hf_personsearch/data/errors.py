"""Bad input in raw datasets: fail loudly in strict mode, skip and count otherwise.

A 100k-image dataset always has a few broken files. Users want those skipped, but never silently:
:class:`SkipCounter` counts each skipped item per reason (with the first few locations) and
:meth:`SkipCounter.report` says what was dropped at the end of loading. With ``strict=True`` the first
problem raises :class:`DataFormatError` naming the file (and line) and what was expected.

Every parser of :mod:`hf_personsearch.data.formats` is wrapped by :func:`reports_skips`, so its skips are
reported the same way whoever calls it: directly, through the ``datasets`` builder or the fine-tuning code.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections import Counter, defaultdict
from collections.abc import Callable

logger = logging.getLogger(__name__)


class DataFormatError(ValueError):
    """A raw annotation or image does not have the documented format."""


class SkipCounter:
    """Counts skipped items per reason; raises instead when ``strict``.

    Args:
        strict: raise on the first problem instead of skipping it.
        max_examples: how many locations to remember per reason for the report (enough to find the
            files without flooding the log).
        parent: a counter that also receives every skip (the caller's counter while a parser counts
            one call's skips in its own, see :func:`reports_skips`).
    """

    def __init__(self, strict: bool = False, max_examples: int = 3, parent: SkipCounter | None = None):
        self.strict = strict
        self.max_examples = max_examples
        self.parent = parent
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        """Record one skipped item (``where``: file[:line] or image id), or raise when strict."""
        message = f"{where}: {reason}" + (f" ({detail})" if detail else "")
        if self.strict:
            raise DataFormatError(message)
        self._count(reason, message)

    def _count(self, reason: str, message: str) -> None:
        self.counts[reason] += 1
        if len(self.examples[reason]) < self.max_examples:
            self.examples[reason].append(message)
        if self.parent is not None:
            self.parent._count(reason, message)

    def to_dict(self) -> dict:
        """The counts and example locations as JSON-ready data (stored with a prepared dataset)."""
        return {"strict": self.strict, "counts": dict(self.counts), "examples": dict(self.examples)}

    @classmethod
    def from_dict(cls, data: dict) -> SkipCounter:
        """The counter :meth:`to_dict` described."""
        counter = cls(strict=data["strict"])
        counter.counts.update(data["counts"])
        counter.examples.update(data["examples"])
        return counter

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self, name: str = "dataset") -> str:
        """A one-paragraph summary of what was skipped: the count per reason with example locations."""
        if not self.counts:
            return f"{name}: nothing skipped"
        lines = [f"{name}: skipped {self.total} item(s)"]
        for reason, count in self.counts.most_common():
            lines.append(f"  {count} x {reason}, e.g. {'; '.join(self.examples[reason])}")
        return "\n".join(lines)

    def report(self, name: str = "dataset") -> str:
        """:meth:`summary`, also logged as a warning when something was skipped."""
        text = self.summary(name)
        if self.counts:
            logger.warning(text)
        return text


def reports_skips(label: str) -> Callable[[Callable], Callable]:
    """Decorator of a parser function taking ``split``, ``strict`` and ``skips``: the one skip report.

    Each call counts its skips in a counter of its own (forwarding them to the caller's ``skips`` when
    one is given, whose ``strict`` then applies) and, when parsing ends, logs :meth:`SkipCounter.report`
    under ``"<label> <split>"``. So a direct ``parse(data_dir, split)`` reports exactly as a call through
    the builder does; a generator reports when it is exhausted.
    """

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)

        def arguments(args: tuple, kwargs: dict) -> tuple[inspect.BoundArguments, SkipCounter, str]:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            caller = bound.arguments["skips"]
            strict = bound.arguments["strict"] if caller is None else caller.strict
            bound.arguments["skips"] = own = SkipCounter(strict, parent=caller)
            return bound, own, f"{label} {bound.arguments['split']}"

        if inspect.isgeneratorfunction(function):

            @functools.wraps(function)
            def parse(*args, **kwargs):
                bound, own, name = arguments(args, kwargs)
                yield from function(*bound.args, **bound.kwargs)
                own.report(name)

            return parse

        @functools.wraps(function)
        def load(*args, **kwargs):
            bound, own, name = arguments(args, kwargs)
            result = function(*bound.args, **bound.kwargs)
            own.report(name)
            return result

        return load

    return decorate
