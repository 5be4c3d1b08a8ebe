"""Data: raw-format parsers, the unified schema, unification, two-view augmentation, sampling, collate.

``datasets`` is imported only when a dataset is loaded, so the model code never needs it.
"""

from .schema import NO_IDENTITY


def load_person_search_dataset(*args, **kwargs):
    """Load one split of a raw dataset folder as a ``datasets.Dataset`` (see :mod:`.loading`)."""
    from .loading import load_person_search_dataset as load

    return load(*args, **kwargs)


__all__ = ["NO_IDENTITY", "load_person_search_dataset"]
