"""Hub helpers: model cards, backbone weight export/import, loading a saved search model of either family."""

from .export import (
    BackboneLoadReport,
    backbone_state_dict,
    export_backbone,
    is_timm_tag,
    load_backbone_weights,
    load_checkpoint_backbone,
    read_state_dict,
    summarise_keys,
)
from .loading import load_search_model
from .model_card import eval_results_to_model_index, model_index_metrics, refresh_model_card, render_model_card

__all__ = [
    "BackboneLoadReport",
    "backbone_state_dict",
    "eval_results_to_model_index",
    "export_backbone",
    "is_timm_tag",
    "load_backbone_weights",
    "load_checkpoint_backbone",
    "load_search_model",
    "model_index_metrics",
    "read_state_dict",
    "refresh_model_card",
    "render_model_card",
    "summarise_keys",
]
