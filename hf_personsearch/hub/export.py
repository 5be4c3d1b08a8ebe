"""Backbone weights in and out: plug-and-play with the person search code that loads torchvision or timm files.

Export layouts
    ``torchvision``: ``{"state_dict": {...}}`` with torchvision's key names and no prefix, as the paper's
        released backbones (resnet50-ps12.pth, resnet18-ps15.pth); loads ``strict`` into
        ``torchvision.models.<arch>()`` once its classifier (``fc``) is removed. Written with ``torch.save``
        of tensors only, so readers can use ``torch.load(..., weights_only=True)``.
    ``timm``: a plain safetensors state dict with timm's key names (the timm model without its classifier),
        loadable with ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))``.

Import (:func:`load_backbone_weights`) reads either layout, the paper's released files (including the megvii
ShuffleNet V1 layout of shufflenetv1-ps19.pth, into the ``builtin`` ShuffleNet V1) and ImageNet classification
weights (the classifier is ignored), never unpickling anything but tensors; or fetches a timm pretrained tag
such as ``resnet50.tv_in1k`` through timm. Exports of a frozen-BatchNorm backbone get back the
``num_batches_tracked`` keys (0) that torchvision and timm BatchNorms have.

Why the key names line up: our :class:`~hf_personsearch.backbone.SplitBackbone` keeps the timm
``features_only`` network (or the torchvision model) as ``backbone.body`` with its original module names, and
timm's ResNets use torchvision's ResNet names, so a ResNet body's state dict is already in both layouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

FORMATS = ("torchvision", "timm")
PAPER_STATE_DICT_KEY = "state_dict"
"""The single top-level key of the paper's released backbone files."""

# Wrappers that training scripts commonly put around a state dict; unwrapped in this order when the file
# holds nothing but a dict under that key.
_WRAPPER_KEYS = (PAPER_STATE_DICT_KEY, "model", "state_dict_ema")
# Suffixes that make a missing source a file rather than a timm tag ("resnet50.pth" is not a tag).
_WEIGHTS_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".tar", ".pkl", ".npz", ".h5")
# Prefix that torch's DistributedDataParallel / DataParallel add to every key.
_DATA_PARALLEL_PREFIX = "module."


@dataclass
class BackboneLoadReport:
    """What :func:`load_backbone_weights` did: the source (file or timm tag), the keys it loaded and the source's
    keys it ignored because they belong to modules the backbone does not have (the classifier of ImageNet
    weights, e.g. ``fc.*``) or are BatchNorm counters (``num_batches_tracked``) that frozen BatchNorms lack."""

    source: str
    loaded_keys: list[str] = field(default_factory=list)
    ignored_keys: list[str] = field(default_factory=list)


def _split_backbone(model) -> nn.Module:
    """The backbone (``.body`` = the library network) of a PersonSearchModel or AlignPSModel, of an object
    holding one as ``.person_search`` (the pre-training model), or the backbone itself."""
    if hasattr(model, "person_search"):
        model = model.person_search
    backbone = getattr(model, "backbone", model)
    if not hasattr(backbone, "body"):
        raise TypeError(
            f"expected a PersonSearchModel, an object with .person_search, or a SplitBackbone; got {type(model).__name__}"
        )
    return backbone


def _backbone_config(model):
    if hasattr(model, "person_search"):
        model = model.person_search
    return getattr(model, "config", None)


def backbone_state_dict(
    model, format: str = "torchvision", architecture: str | None = None
) -> dict[str, torch.Tensor]:
    """The backbone's weights in the ``format`` layout (see the module docstring), as contiguous CPU tensors.

    Args:
        model: a PersonSearchModel, an object with ``.person_search`` (the pre-training model) or a SplitBackbone.
        format: "torchvision" or "timm".
        architecture: the torchvision model the export must fit (``torchvision`` format only); default: the
            model's ``config.backbone`` (resnet18/resnet50/... name the same architecture in timm and torchvision).
            Every key and shape is checked against ``torchvision.models.<architecture>()``, so a timm model
            without a torchvision twin (e.g. ``test_resnet`` with its deep stem) is refused instead of
            producing a file that other code cannot load.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    backbone = _split_backbone(model)
    config = _backbone_config(model)
    library = getattr(config, "backbone_library", "timm")
    if library == "builtin":
        raise ValueError(
            f"backbone {config.backbone!r} (builtin ShuffleNet V1) has neither a torchvision nor a timm layout; "
            "its state dict (model.backbone.body.state_dict()) already uses megvii's ShuffleNet-Series names, "
            "the layout of the paper's shufflenetv1-ps19.pth"
        )
    state = {key: value.detach().cpu().contiguous() for key, value in backbone.body.state_dict().items()}
    state.update(_batchnorm_counters(backbone.body))
    if format == "timm":
        if library != "timm":
            raise ValueError(
                f"backbone {getattr(config, 'backbone', '?')!r} comes from {library} and has no timm layout "
                "(timm has no ShuffleNet); export it with format='torchvision'"
            )
        return state
    architecture = architecture or getattr(config, "backbone", None)
    _check_torchvision_layout(state, architecture)
    return state


def _batchnorm_counters(body: nn.Module) -> dict[str, torch.Tensor]:
    """``num_batches_tracked`` (0) of every frozen BatchNorm of ``body``: the key that torchvision's and timm's
    BatchNorm layers have and a frozen BatchNorm lacks, so that exports load ``strict`` into those libraries.
    0 is "count unknown"; BatchNorm only reads the counter when its momentum is None."""
    from timm.layers import FrozenBatchNormAct2d
    from torchvision.ops import FrozenBatchNorm2d

    return {
        f"{name}.num_batches_tracked": torch.tensor(0, dtype=torch.long)
        for name, module in body.named_modules()
        if isinstance(module, (FrozenBatchNorm2d, FrozenBatchNormAct2d))
    }


def _torchvision_reference(architecture: str | None) -> dict[str, torch.Tensor]:
    import torchvision

    builder = getattr(torchvision.models, architecture or "", None)
    if architecture is None or not callable(builder):
        raise ValueError(
            f"torchvision export: {architecture!r} is not a torchvision classification model "
            "(pass architecture='resnet50' etc. for a backbone whose config name differs)"
        )
    reference = builder(weights=None)
    classifier = {name for name, _ in reference.named_children()} & {"fc", "classifier"}
    return {k: v for k, v in reference.state_dict().items() if k.split(".")[0] not in classifier}


def _check_torchvision_layout(state: dict[str, torch.Tensor], architecture: str | None) -> None:
    reference = _torchvision_reference(architecture)
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    wrong_shape = [
        f"{key}: ours {tuple(state[key].shape)}, torchvision {tuple(reference[key].shape)}"
        for key in sorted(set(state) & set(reference))
        if state[key].shape != reference[key].shape
    ]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"the backbone does not have the layout of torchvision.models.{architecture} (minus its classifier): "
            f"missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}), "
            f"wrong shapes {wrong_shape[:5]}"
        )


TORCHVISION_LOAD_LINE = (
    "backbone = torchvision.models.{architecture}(); backbone.fc = torch.nn.Identity(); "
    'backbone.load_state_dict(torch.load("{path}", weights_only=True)["state_dict"])'
)
"""How a torchvision user loads a ``torchvision`` export, strict, in one line: the file keeps the layout of the
paper's released backbones (``{"state_dict": ...}``, no classifier) so code written for those files reads ours;
the classifier is replaced by ``Identity`` because a backbone has none (ShuffleNet V2's is ``fc`` too)."""


def export_formats(config) -> tuple[str, ...]:
    """The export layouts that work for a model of ``config`` (a PersonSearchConfig, or a pre-training config
    holding one as ``person_search``): what cards and the CLI may advertise.

    "timm" for timm backbones; "torchvision" where the backbone's keys and shapes are exactly those of the
    torchvision model of the same name (ResNets; torchvision's ShuffleNet V2), checked by building both
    without weights; none for the builtin ShuffleNet V1, whose state dict already has megvii's layout.
    """
    config = getattr(config, "person_search", config)
    if config.backbone_library == "builtin":
        return ()
    if config.backbone_library == "torchvision":
        return ("torchvision",)
    from ..backbone import timm_feature_network

    state = timm_feature_network(config.backbone).state_dict()
    try:
        _check_torchvision_layout(state, config.backbone.split(".")[0])
    except ValueError:
        return ("timm",)
    return ("timm", "torchvision")


def export_backbone(model, path: str | Path, format: str = "torchvision", architecture: str | None = None) -> Path:
    """Write the backbone's weights to ``path`` in ``format`` (see the module docstring) and return the path.

    ``torchvision``: ``torch.save({"state_dict": ...})`` (a .pth file, as the paper's releases).
    ``timm``: safetensors (timm reads it by its .safetensors suffix); ``path`` must end with .safetensors.
    """
    path = Path(path)
    state = backbone_state_dict(model, format=format, architecture=architecture)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "torchvision":
        torch.save({PAPER_STATE_DICT_KEY: state}, path)
    else:
        if path.suffix != ".safetensors":
            raise ValueError(f"timm export: {path} must end with .safetensors (timm picks the reader by suffix)")
        from safetensors.torch import save_file

        save_file(state, str(path), metadata={"format": "pt"})
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: safetensors, or a torch file read with ``weights_only=True`` (only tensors
    and plain containers are unpickled; a file that needs anything else is refused by torch). A dict whose
    only content is a wrapper key (``state_dict`` as in the paper's files, ``model``, ``state_dict_ema``) is
    unwrapped, and the ``module.`` prefix of data-parallel checkpoints is removed when every key has it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError... depending on the damage
            raise ValueError(
                f"{path}: not a weights file readable with torch.load(weights_only=True): {error}"
            ) from error
    for wrapper in _WRAPPER_KEYS:
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: expected a state dict (name -> tensor) or {{'state_dict': ...}}, got {type(state)}")
    not_tensors = [key for key, value in state.items() if not torch.is_tensor(value)]
    if not_tensors:
        raise ValueError(f"{path}: entries {not_tensors[:5]} are not tensors; expected a flat state dict")
    if all(key.startswith(_DATA_PARALLEL_PREFIX) for key in state):
        state = {key[len(_DATA_PARALLEL_PREFIX) :]: value for key, value in state.items()}
    return state


def _is_batchnorm_counter(key: str) -> bool:
    return key.endswith(".num_batches_tracked")


def is_timm_tag(source: str | Path) -> bool:
    """Whether :func:`load_backbone_weights` reads ``source`` as a timm pretrained tag ``architecture.tag``
    (e.g. ``resnet50.tv_in1k``): a string with a dot that is no existing file and has no folder part and no
    weights-file suffix."""
    if isinstance(source, Path) or Path(source).exists() or "/" in source or "\\" in source:
        return False
    return "." in source and Path(source).suffix.lower() not in _WEIGHTS_FILE_SUFFIXES


class WeightsUnavailableError(OSError):
    """Starting weights that cannot be had here (a timm tag offline and not in the cache, a failed download)."""


def timm_weights_offline_problem(source: str) -> str | None:
    """Why timm's pretrained tag ``source`` cannot be loaded in this process, known without a network call: offline
    (``HF_HUB_OFFLINE``) and not in the Hugging Face cache. None otherwise: online (only the download tells), or
    ``source`` is no timm tag (:func:`is_timm_tag`; a weights file)."""
    from huggingface_hub import constants, try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    if not constants.HF_HUB_OFFLINE or not is_timm_tag(source):
        return None
    try:
        repo_id = getattr(get_pretrained_cfg(source), "hf_hub_id", None)
    except RuntimeError:  # not a timm tag: the loader's own checks say so
        return None
    if not repo_id or any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in TIMM_WEIGHT_FILES):
        return None
    return (
        f"HF_HUB_OFFLINE is set and timm's weights {source!r} are not in the Hugging Face cache: run "
        f"timm.create_model({source!r}, pretrained=True) once where there is internet (it fills the cache), or pass "
        "a local weights file"
    )


TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
"""The files timm loads from a tag's Hub repository, in its order of preference."""


def _fetch_timm_weights(model, source: str) -> dict[str, torch.Tensor]:
    """The weights of timm pretrained tag ``source``, fetched by timm (Hugging Face Hub cache, or a download
    when online) into the same ``features_only`` network the backbone was built from."""
    from timm.models import get_pretrained_cfg

    from ..backbone import timm_feature_network

    architecture = source.partition(".")[0]
    config = _backbone_config(model)
    library, name = getattr(config, "backbone_library", "timm"), getattr(config, "backbone", None)
    if library != "timm":
        raise ValueError(
            f"timm weights {source!r}: the backbone {name!r} comes from {library}, not timm, and timm has no "
            "weights for it; pass a local weights file instead"
        )
    if name is not None and name.split(".")[0] != architecture:
        raise ValueError(
            f"timm weights {source!r} are for architecture {architecture!r} but the backbone is {name!r}; "
            f"use a tag of {name.split('.')[0]!r} (timm.list_pretrained({name.split('.')[0] + '.*'!r}))"
        )
    try:
        known = get_pretrained_cfg(source) is not None
    except RuntimeError:  # timm: "Invalid pretrained tag (...) for ..."
        known = False
    if not known:
        raise ValueError(
            f"{source!r} is not a timm pretrained tag 'architecture.tag' (nor an existing file); timm's tags for "
            f"{architecture!r}: timm.list_pretrained({architecture + '.*'!r}); or pass a local weights file"
        )
    try:
        network = timm_feature_network(source, pretrained=True)
    except Exception as error:  # huggingface_hub / torch.hub raise many types (offline, HTTP, cache errors)
        raise WeightsUnavailableError(
            f"could not fetch the timm weights {source!r} ({type(error).__name__}: {error}). Offline? Run "
            f"timm.create_model({source!r}, pretrained=True) once where there is internet (it fills the Hugging "
            "Face cache, which works offline afterwards), or pass a local weights file (torchvision/timm/paper "
            "layout)"
        ) from error
    return network.state_dict()


def _record_provenance(model, provenance: str) -> None:
    """Write ``backbone_init`` (informational metadata) into the person search config(s) of ``model``."""
    configs = [_backbone_config(model), getattr(getattr(model, "config", None), "person_search", None)]
    for config in configs:
        if config is not None and hasattr(config, "backbone_init"):
            config.backbone_init = provenance


def check_finite(state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Refuse weights with NaN or infinite values (a diverged run's checkpoint), naming the keys: loaded,
    they would make every output NaN with no error until the loss or the evaluation shows it."""
    bad = [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise ValueError(f"{source}: NaN or infinite values in {len(bad)} tensor(s): {bad[:5]}; nothing was loaded")


def load_backbone_weights(model, source: str | Path) -> BackboneLoadReport:
    """Initialise the model's backbone from ``source`` and return what was loaded and ignored.

    ``source`` is a local weights file in torchvision, timm or the paper's layout (the paper's released
    backbones, our exports, ImageNet weights of either library, megvii ShuffleNet V1 files), or a timm
    pretrained tag ``"architecture.tag"`` such as ``"resnet50.tv_in1k"`` (torchvision's ImageNet ResNet50, the
    start of NAE, SeqNet and the paper), fetched by timm; its architecture must be the backbone's. Offline
    with nothing cached, or an unknown tag, is an error that suggests a local file.

    Keys of modules the backbone does not have (the classifier: ``fc.*``, ``classifier.*``, timm's
    ``conv_head.*``) are ignored and listed in the report; every weight the backbone has must be in the file
    with the right shape, otherwise nothing is loaded and the error names the keys (a file with another
    prefix, e.g. ``backbone.``, shows up as "missing" keys). BatchNorm's ``num_batches_tracked`` counter is
    optional both ways (a frozen BatchNorm has none; a BatchNorm keeps its own when the file has none).

    The model's config records the source in ``backbone_init`` (a tag, or the file name without its
    folder): informational metadata for model cards, never read when a model is built.
    """
    backbone = _split_backbone(model)
    if isinstance(source, str) and is_timm_tag(source):
        state, provenance = _fetch_timm_weights(model, source), source
    elif not Path(source).is_file():
        raise FileNotFoundError(
            f"backbone weights {str(source)!r}: no such file, and not a timm pretrained tag 'architecture.tag' "
            "(e.g. resnet50.tv_in1k)"
        )
    else:
        state, provenance = read_state_dict(source), Path(source).name
    return _load_into_backbone(model, backbone, state, source, provenance)


def _load_into_backbone(model, backbone: nn.Module, state: dict, source, provenance: str) -> BackboneLoadReport:
    """Load ``state`` (the body's key names) strictly into ``backbone.body``; see :func:`load_backbone_weights`."""
    first_keys = list(state)[:3]
    own = backbone.body.state_dict()
    body_modules = {name for name, _ in backbone.body.named_children()}
    ignored = {
        key
        for key in state
        if key.split(".")[0] not in body_modules or (_is_batchnorm_counter(key) and key not in own)
    }
    state = {key: value for key, value in state.items() if key not in ignored}
    missing = sorted(key for key in set(own) - set(state) if not _is_batchnorm_counter(key))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [
        f"{key}: file {tuple(state[key].shape)}, backbone {tuple(own[key].shape)}"
        for key in sorted(set(state) & set(own))
        if state[key].shape != own[key].shape
    ]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"{source}: does not fit the backbone: missing keys {missing[:5]} ({len(missing)} in all), unexpected "
            f"keys {unexpected[:5]} ({len(unexpected)}), wrong shapes {wrong_shape[:5]}; "
            f"the file's first keys are {first_keys}"
        )
    loaded = sorted(state)
    state = {key: state[key].to(value.dtype) if key in state else value for key, value in own.items()}
    check_finite(state, source)
    backbone.body.load_state_dict(state, strict=True)
    _record_provenance(model, provenance)
    return BackboneLoadReport(source=str(source), loaded_keys=loaded, ignored_keys=sorted(ignored))


CHECKPOINT_BACKBONE_PREFIXES = ("backbone.body.", "person_search.backbone.body.")
"""Where the backbone's weights sit in a saved person search model (PersonSearchModel, AlignPSModel) and in a
pre-training checkpoint (PersonSearchPretrainModel holds the person search model as ``person_search``)."""


def _checkpoint_backbone_name(config: dict) -> str | None:
    return config.get("person_search", config).get("backbone")


def load_checkpoint_backbone(model, checkpoint: str | Path) -> BackboneLoadReport:
    """Initialise the model's backbone from the backbone of a saved person search model or pre-training checkpoint
    (a folder or Hub id holding ``config.json`` + ``model.safetensors``): the part every downstream family shares
    with the pre-trained model, e.g. an AlignPS model started from our pre-trained NAE checkpoint.

    The report's ``loaded_keys`` are the backbone tensors taken (body key names); its ``ignored_keys`` are every
    other tensor of the checkpoint, left behind (RPN, detection and re-ID heads, OIM tables, SimSiam predictor,
    alignment modules). The checkpoint's backbone architecture must be the model's.
    """
    import json

    from safetensors.torch import load_file
    from transformers.utils import cached_file

    backbone = _split_backbone(model)
    try:
        config_file = cached_file(str(checkpoint), "config.json")
        weights_file = cached_file(str(checkpoint), "model.safetensors")
    except OSError as error:
        raise OSError(
            f"{checkpoint}: not a saved person search model (a folder or Hub id with config.json and "
            f"model.safetensors): {error}"
        ) from error
    saved_config = json.loads(Path(config_file).read_text())
    saved_name, own_name = _checkpoint_backbone_name(saved_config), getattr(_backbone_config(model), "backbone", None)
    if saved_name is None:
        raise ValueError(
            f"{checkpoint}: config.json names no backbone (model_type {saved_config.get('model_type')!r})"
        )
    if own_name is not None and saved_name != own_name:
        raise ValueError(f"{checkpoint}: its backbone is {saved_name!r}, the model's is {own_name!r}")
    everything = load_file(weights_file)
    prefix = next((p for p in CHECKPOINT_BACKBONE_PREFIXES if any(key.startswith(p) for key in everything)), None)
    if prefix is None:
        raise ValueError(
            f"{checkpoint}: no backbone weights (no key starts with {' or '.join(CHECKPOINT_BACKBONE_PREFIXES)}); "
            f"first keys {list(everything)[:3]}"
        )
    state = {key[len(prefix) :]: value for key, value in everything.items() if key.startswith(prefix)}
    report = _load_into_backbone(model, backbone, state, checkpoint, f"{Path(str(checkpoint)).name} (backbone)")
    left = sorted(key for key in everything if not key.startswith(prefix))
    return BackboneLoadReport(source=str(checkpoint), loaded_keys=report.loaded_keys, ignored_keys=left)


def summarise_keys(keys: list[str], depth: int = 1) -> dict[str, int]:
    """Tensor count per leading module path (``depth`` dotted parts): a readable "what was left" of a load."""
    counts: dict[str, int] = {}
    for key in keys:
        head = ".".join(key.split(".")[:depth])
        counts[head] = counts.get(head, 0) + 1
    return counts
