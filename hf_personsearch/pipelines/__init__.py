"""The "person-search" pipeline, the gallery index and the search picture.

Importing this package registers ``pipeline("person-search", model=...)`` with transformers' PIPELINE_REGISTRY
(and, through ``hf_personsearch``, the model with the Auto classes).
"""

from transformers import AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

import hf_personsearch  # noqa: F401  (registers PersonSearchConfig / PersonSearchModel with the Auto classes)

from .gallery_index import GalleryIndex, faiss_available, model_fingerprint
from .person_search import (
    PersonSearchPipeline,
    check_box,
    display_path,
    format_matches_table,
    gallery_sources,
    image_from_source,
    load_image,
)
from .visualization import render_search_result

TASK = "person-search"

PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=PersonSearchPipeline, pt_model=AutoModel, type="image")

__all__ = [
    "TASK",
    "GalleryIndex",
    "PersonSearchPipeline",
    "check_box",
    "display_path",
    "faiss_available",
    "format_matches_table",
    "gallery_sources",
    "image_from_source",
    "load_image",
    "model_fingerprint",
    "render_search_result",
]
