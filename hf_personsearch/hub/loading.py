"""One loader for a saved search model, whatever its family: the command line, ``examples/run_eval.py`` and the
pre-training benchmark all go through :func:`load_search_model`."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, PreTrainedModel

from ..configuration_align_ps import AlignPSConfig
from ..configuration_person_search import PersonSearchConfig
from ..configuration_person_search_pretrain import PersonSearchPretrainConfig
from ..modeling_align_ps import AlignPSModel
from ..modeling_person_search import PersonSearchModel


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_search_model(name_or_path: str) -> tuple[PreTrainedModel, list[str]]:
    """The search model (float32, eval mode) of a saved folder or Hub id, and notes for the user.

    A :class:`PersonSearchModel` or :class:`AlignPSModel` (ROI-AlignPS included) loads as itself; a pre-training
    checkpoint gives its downstream person search part (detector and re-ID head as pre-trained, said in the
    notes). Anything else is a ValueError of one line that starts with ``name_or_path``: a folder without
    config.json, a path that does not exist, an id that cannot be resolved, another model type, or weights that
    cannot be read.
    """
    path = Path(name_or_path)
    if path.is_dir() and not (path / "config.json").is_file():
        raise ValueError(f"{path}: not a saved model folder ({path / 'config.json'} does not exist)")
    if not path.exists() and (name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1):
        raise ValueError(f"{name_or_path}: no such folder")
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{name_or_path}: neither a saved model folder nor a loadable Hub model id ({_first_line(error)})"
        ) from error
    if not isinstance(config, (PersonSearchConfig, PersonSearchPretrainConfig, AlignPSConfig)):
        raise ValueError(
            f"{name_or_path}: a {config.model_type!r} model, not a person search model (expected model_type "
            f"{PersonSearchConfig.model_type!r}, {PersonSearchPretrainConfig.model_type!r} or "
            f"{AlignPSConfig.model_type!r})"
        )
    notes = []
    if isinstance(config, PersonSearchPretrainConfig):
        notes.append(
            f"{name_or_path} is a pre-training checkpoint: searching with its person search part (detector and "
            "re-ID head as pre-trained, not fine-tuned on a target dataset)"
        )
    model_class = AlignPSModel if isinstance(config, AlignPSConfig) else PersonSearchModel
    try:
        model = model_class.from_pretrained(name_or_path, dtype=torch.float32)
    except OSError as error:
        raise ValueError(f"{name_or_path}: its weights cannot be loaded ({_first_line(error)})") from error
    return model.eval(), notes
