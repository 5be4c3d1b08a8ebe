"""Result objects: plain dicts (JSON-ready, ``result["mAP"]``) that print as a small table for logs."""

from __future__ import annotations


def _markdown_table(header: list[str], row: list[str]) -> str:
    widths = [max(len(h), len(v)) for h, v in zip(header, row)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
        "| " + " | ".join("-" * w for w in widths) + " |",
        "| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |",
    ]
    return "\n".join(lines)


class SearchResult(dict):
    """Person search result: ``mAP``, ``top{k}`` for each k, ``per_query`` and bookkeeping keys.

    Keys: ``mAP``, ``top1``/``top5``/``top10`` (one per requested k), ``protocol``, ``num_queries``
    (queries averaged), ``skipped_queries`` (indices of queries the protocol skips: PoseTrack21 queries
    without any gallery occurrence), ``per_query`` (list of dicts: image_id, person_id, ap, recall,
    ranked = top-k list of {image_id, box, similarity, correct}). ``str(result)`` is a markdown table.
    """

    def topk_keys(self) -> list[str]:
        return sorted((k for k in self if k.startswith("top") and k[3:].isdigit()), key=lambda k: int(k[3:]))

    def to_table(self) -> str:
        """A one-row markdown table: protocol, mAP and top-k in percent (as papers report them)."""
        header = ["protocol", "queries", "mAP"] + [f"top-{k[3:]}" for k in self.topk_keys()]
        row = [str(self.get("protocol", "")), str(self.get("num_queries", "")), f"{100 * self['mAP']:.2f}"]
        row += [f"{100 * self[k]:.2f}" for k in self.topk_keys()]
        return _markdown_table(header, row)

    def __str__(self) -> str:
        return self.to_table()


class DetectionResult(dict):
    """Detection result: ``ap`` (AP x recall), ``recall``, ``num_gt``, ``num_tp``, ``labeled_only``."""

    def to_table(self) -> str:
        """A one-row markdown table of AP and recall in percent."""
        header = ["detection", "AP", "recall", "gt boxes"]
        mode = "labeled only" if self.get("labeled_only") else "all"
        row = [mode, f"{100 * self['ap']:.2f}", f"{100 * self['recall']:.2f}", str(self["num_gt"])]
        return _markdown_table(header, row)

    def __str__(self) -> str:
        return self.to_table()
