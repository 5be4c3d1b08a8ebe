"""Training configuration: a YAML file + command-line overrides, checked against the known keys.

A run is described by one nested dict with the sections of :data:`PRETRAIN_DEFAULTS` (``data``, ``model``,
``model_init``, ``optimizer``, ``schedule``, ``training``, ``checkpointing``, ``hub``). A YAML file holds only
what differs from the defaults (SeqNet's habit: per-recipe files are overrides); ``key.sub=value`` strings from the
command line override the file (values are parsed as YAML, so ``training.max_steps=20`` is an int and
``model.use_reid_iam=false`` a bool). Unknown keys are errors naming the file or override and the keys that
exist, so a typo never silently trains with a default. The resolved dict is saved next to the outputs
(:func:`save_resolved_config`).

Fine-tuning uses the same machinery with :data:`FINETUNE_DEFAULTS`. Both scripts take the same command line
(:func:`build_argument_parser`, :func:`config_from_args`)::

    run_{pretrain,finetune}.py --config FILE [KEY=VALUE ...] [-o KEY=VALUE ...] [--output_dir DIR]
        [--max_steps N] [--seed S] [--resume_from_checkpoint latest|PATH] [--stop_after_steps N]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import yaml

NAE_OPTIMIZER: dict = {
    # SGD with momentum 0.9 and weight decay 5e-4 is what NAE/SeqNet (the paper's codebases) use, for
    # pre-training and fine-tuning alike; lr 0.003 is their value for batch size 5 (scale it linearly with the
    # total batch size).
    "name": "sgd",
    "lr": 0.003,
    "momentum": 0.9,
    "weight_decay": 0.0005,
    # Learning rate multiplier of the biases (not of normalisation layers): 1 in NAE/SeqNet; AlignPS uses 2
    # (mmdetection's bias_lr_mult).
    "bias_lr_factor": 1.0,
    # AdamW only: the usual transformer values.
    "betas": [0.9, 0.999],
    "eps": 1.0e-8,
}
"""The optimiser section of both defaults below."""

PRETRAIN_DEFAULTS: dict = {
    "data": {
        # Each source: {name, data_dir (None -> synthetic when no source has one), split, weight, options}.
        # The paper's five sub-task datasets, weighted by size (weight None) like one concatenated dataset.
        "sources": [
            {"name": "crowdhuman", "data_dir": None, "split": "train", "weight": None, "options": {}},
            {"name": "ecp", "data_dir": None, "split": "train", "weight": None, "options": {}},
            {"name": "msmt17", "data_dir": None, "split": "train", "weight": None, "options": {}},
            {"name": "cuhk03", "data_dir": None, "split": "train", "weight": None, "options": {}},
            {"name": "luperson", "data_dir": None, "split": "train", "weight": None, "options": {}},
        ],
        # Writer size arguments of the synthetic generator per dataset (see hf_personsearch.data.synthetic);
        # empty = the writers' own small defaults.
        "synthetic_sizes": {},
        # Where the Arrow files of the prepared datasets go; None = the datasets cache (HF_DATASETS_CACHE),
        # except for synthetic data, which is cached inside the output folder it was written to.
        "cache_dir": None,
        # Unification (paper "Data unification"): expand_resize for re-ID crops, canvas size of re-ID images.
        "reid_operation": "expand_resize",
        "canvas_size": [512, 512],
        "crops_per_canvas": 1,
        # Where a re-ID canvas is painted and its two views cut (two resizes of ~700 x 700 px for a 512 canvas):
        # false, in the DataLoader workers; true, in the training step on the training device (only the draws stay
        # in the workers, hf_personsearch.data.unification.CanvasPlan). On one CPU core the painting and the views
        # cost 3-4x decoding and resizing the crop (benchmarks/bench_data.py); on a GPU next to nothing, so the
        # GPU recipes (pretrain_r50/r18/shufflenet.yaml) say true. False here: the embedded default trains on the
        # CPU, where the step runs on the same cores and the workers work in parallel with it. The fill noise is
        # drawn from a per-sample seed when true: other samples of the same distribution.
        "canvas_in_step": False,
        # Each view's batch padded to multiples of this (1: to its largest image only). On a GPU a convolution
        # input of a shape not seen before costs cuDNN's set-up on the host: measured on an H200 (ResNet-50
        # recipe, bf16), a step on new shapes took 527-581 ms against 301-337 ms for the same batches again (the
        # host time in cudnn_convolution and convolution_backward 330 ms a step against 20 ms), and nearly every
        # batch brings a new shape. benchmarks/bench_batch_shapes.py, 60 new batches a stream, interleaved:
        # unpadded 97 view shapes, 534 ms a step; padded to 128, 34 shapes, 404 ms (375 ms over the second half,
        # as shapes come back). The GPU recipes say 128; 1 here, where the CPU has no such cost. At most 0.4 x
        # the smallest of min_sizes: more padding could change the feature stride RoIAlign infers from the
        # batch's largest image (torchvision's rule, the nearest power of two).
        "size_divisor": 1,
        # Two-view augmentation sizes (shortest side drawn from min_sizes, longest <= max_size); None keeps
        # the augmentation's detection defaults (480-800 / 1333).
        "min_sizes": None,
        "max_size": None,
        # Probabilities of the two-view augmentation's photometric half (hf_personsearch.data.photometric).
        # No colour jitter and no grayscale (SimSiam uses 0.8 and 0.2; the paper names no augmentation): both
        # views of a person then carry its clothing colours, the main cue of re-ID (supervised re-ID recipes
        # such as fast-reid leave colour jitter off by default; NAE/SeqNet fine-tune with flips only), while
        # SimSiam's jitter (hue +-0.1, saturation 0.4) teaches the embedding to ignore them. Measured on the
        # synthetic benchmark (identity shows in clothing colours), seed 0: with SimSiam's jitter the pre-trained
        # model re-identifies target persons worse than a randomly initialised one (re-ID mAP on ground-truth
        # boxes 15.5 vs 18.4), without it 19.5, and after fine-tuning (320 steps) search mAP 28.2 -> 37.1.
        # The Gaussian blur (SimSiam's 0.5) is kept: it changes no colour.
        "color_jitter_p": 0.0,
        "grayscale_p": 0.0,
        "blur_p": 0.5,
        # DataLoader worker processes; 2 keeps a GPU fed on augmentation-heavy batches without many cores.
        "num_workers": 2,
    },
    # PersonSearchPretrainConfig arguments; "person_search" holds the PersonSearchConfig arguments.
    # num_person_ids is always set from the identity space; num_detection_domains / num_reid_domains default
    # to the number of sources of each IAM task and must match it when given.
    "model": {"person_search": {}},
    # Starting weights of the backbone, loaded after the model is built (never saved in its config):
    # a timm pretrained tag such as "resnet50.tv_in1k" (torchvision's ImageNet ResNet50, the start of NAE,
    # SeqNet and the paper; fetched by timm) or a local weights file; None = random initialisation.
    # pretrained_model: the pretrain_model/ folder of an earlier pre-training to continue from, with THIS
    # config's model switches (e.g. use_reid_iam: false): weights of the same name are loaded, those the new
    # model lacks are dropped, those it adds start from their initialisation; the optimiser starts afresh.
    # The pre-training benchmark runs one shared first stage and continues it once per ablation this way.
    "model_init": {"backbone_weights": None, "pretrained_model": None},
    "optimizer": copy.deepcopy(NAE_OPTIMIZER),
    "schedule": {
        # Linear warm-up from warmup_factor * lr over warmup_steps (SeqNet warms up over the first epoch
        # from 1/1000), then "step" (x gamma at each milestone, fractions of max_steps when < 1) or "cosine".
        "name": "step",
        "warmup_steps": 100,
        "warmup_factor": 0.001,
        "milestones": [0.75],
        "gamma": 0.1,
        "min_lr_ratio": 0.0,
    },
    "training": {
        "output_dir": "outputs/pretrain",
        "seed": 0,
        "max_steps": 1000,
        # Images per process per forward; NAE/SeqNet train with 5 images per GPU.
        "batch_size": 5,
        "gradient_accumulation_steps": 1,
        # "no", "bf16" or "fp16" (fp16 needs a GPU; on CPU autocast silently stays fp32).
        "mixed_precision": "no",
        # Gradient clipping by global norm; 10 guards against OIM spikes early in training, 0/None = off.
        # The domain classifiers (IAMs) are left out: they must keep up with the features (loop.py).
        "max_grad_norm": 10.0,
        # Consecutive non-finite losses tolerated (each skipped and counted) before the run stops.
        "max_consecutive_nonfinite": 5,
        "log_every": 10,
        # Trackers for accelerate (tensorboard at least; [] turns logging off).
        "report_to": ["tensorboard"],
        # True runs on CPU even where a GPU exists (the demo, tests).
        "cpu": False,
    },
    "checkpointing": {"every": 500, "keep_last": 3},
    "hub": {"push_to_hub": False, "hub_model_id": None, "private": False},
}
"""Defaults of pre-training; every value is commented with its reason."""

INIT_CHOICES = ("scratch", "imagenet", "pretrained_backbone", "pretrained")
"""Fine-tuning initialisations (the paper's Fig. 5): random weights, an ImageNet backbone, the backbone of a
pre-trained model (heads re-initialised), the whole pre-trained model."""

MODEL_TYPES = ("person_search", "align_ps")
"""Fine-tuning's ``model.type``: the downstream families (their config model_type): NAE (PersonSearchModel) and
AlignPS (AlignPSModel; ROI-AlignPS with ``model.use_roi_head: true``)."""

FINETUNE_DEFAULTS: dict = {
    "data": {
        # One of hf_personsearch.data.search_dataset.TARGET_DATASETS.
        "dataset": "prw",
        # The user's raw folder; None = generate the synthetic dataset of that format (the demo, tests).
        "data_dir": None,
        # Writer size arguments of the synthetic generator; empty = the writer's small defaults.
        "synthetic_sizes": {},
        # Fraction of the training images used (paper Fig. 5), drawn with fraction_seed so that runs with
        # different initialisations see the same images.
        "train_fraction": 1.0,
        "fraction_seed": 0,
        # Image sizes of training and evaluation: NAE/SeqNet's shortest side 900, longest <= 1500.
        "min_size": 900,
        "max_size": 1500,
        # Multi-scale training: the training view's shortest side drawn from train_min_sizes per image, its
        # longest <= train_max_size (one value, or one per shortest side: AlignPS's recipe). None trains at the
        # evaluation size above, as NAE/SeqNet do.
        "train_min_sizes": None,
        "train_max_size": None,
        # Each training batch padded to multiples of this (1: to its largest image only). On a GPU a new input
        # shape costs cuDNN's set-up on the host (measured in pre-training: PRETRAIN_DEFAULTS' data.size_divisor).
        # The GPU recipes say 32, the padding of the published code (SeqNet's torchvision transform, AlignPS's
        # mmdetection pipeline); 1 here, where the CPU has no such cost. At most 0.4 x the smallest training size.
        "size_divisor": 1,
        # Horizontal flip probability of the training view (NAE: 0.5).
        "flip_p": 0.5,
        # DataLoader workers: 2 keeps a GPU fed on full-size scenes without needing many cores.
        "num_workers": 2,
        # Raise on the first unreadable image instead of skipping and counting it.
        "strict": False,
    },
    # Initialisation (INIT_CHOICES) and its weights (file, saved folder or hub id); scratch needs no file,
    # so it is the default that always runs.
    # match_fresh_weight_norms: with a pre-trained init (pretrained, pretrained_backbone; NAE family), rescale every
    # weight that feeds a training-mode BatchNorm to a fresh model's norm, keeping the function
    # (hf_personsearch.training.transfer): pre-training grows these norms, which lowers their effective learning
    # rate. Measured on the CPU benchmark (seeds 0-2, 640 fine-tuning steps, 100% of the frames), search mAP of the
    # full init without / with: 44.1 / 36.9 / 41.5 -> 47.3 / 45.8 / 46.3 after 400 pre-training steps, 61.5 / 57.0 /
    # 56.2 -> 67.3 / 64.2 / 61.2 after 1150 (scratch 45.4 / 45.5 / 46.8).
    "init": {"from": "scratch", "path": None, "match_fresh_weight_norms": True},
    # The config arguments of the model family (num_person_ids is always the training split's identity count),
    # and its "type" (MODEL_TYPES; absent = "person_search", NAE).
    "model": {},
    "optimizer": copy.deepcopy(NAE_OPTIMIZER),
    "schedule": {
        # SeqNet: linear warm-up over the first epoch (warmup_steps None = one epoch) from 1/1000, then x0.1
        # at epoch 16 of 20 (milestone 0.8 of the run).
        "name": "step",
        "warmup_steps": None,
        "warmup_factor": 0.001,
        "milestones": [0.8],
        "gamma": 0.1,
        "min_lr_ratio": 0.0,
    },
    "training": {
        # Relative to the working directory, beside pre-training's outputs/pretrain.
        "output_dir": "outputs/finetune",
        # Seeds model init, data order, augmentation and RoI sampling: two runs with one seed are identical.
        "seed": 0,
        # NAE/SeqNet train 20 epochs; max_steps (optimiser steps) caps the run when set.
        "num_epochs": 20,
        "max_steps": None,
        # Images per process per forward (NAE/SeqNet: 5 per GPU).
        "batch_size": 5,
        # 1: the published batch of 5 per GPU fits any current GPU; raise it to emulate a bigger batch.
        "gradient_accumulation_steps": 1,
        # "no", "bf16" or "fp16" (fp16 needs a GPU); fp32 is what the published numbers used.
        "mixed_precision": "no",
        # NAE/SeqNet clip gradients at norm 10; 0/None = off.
        "max_grad_norm": 10.0,
        # Consecutive non-finite losses tolerated (each step skipped and counted) before the run stops.
        "max_consecutive_nonfinite": 5,
        # Progress bar and trackers every 10 steps (loss_log.jsonl gets every step).
        "log_every": 10,
        # accelerate trackers, e.g. ["tensorboard"]; [] = no tracker.
        "report_to": [],
        # True runs on CPU even where a GPU exists (the demo, tests).
        "cpu": False,
        # Hub id written into the model card (its name and usage snippet); None = the output folder's name.
        "hub_model_id": None,
    },
    # A checkpoint every 1000 optimiser steps (about one PRW epoch at batch 5: 5,704 images / 5 = 1,141 steps)
    # and at the last step of a session; 3 kept: two fallbacks if the newest is found corrupt, at the disk cost
    # of three model + optimiser copies.
    "checkpointing": {"every": 1000, "keep_last": 3},
    "evaluation": {
        # Evaluate every N epochs during training (0 = only at the end).
        "every_epochs": 0,
        # CUHK-SYSU TestG{N}; None = the dataset's standard protocol (TestG100), "full" = the full set.
        "gallery_size": None,
        # PRW / PoseTrack21: only other cameras in the gallery (the published tables: False).
        "cross_camera": False,
        # Detection score threshold of the search protocols (0.5 in every public codebase).
        "det_thresh": 0.5,
        # Gallery images per forward at evaluation: 2 full-size scenes fit a small GPU next to the model.
        "batch_size": 2,
    },
}
"""Defaults of fine-tuning, beside pre-training's; YAML files in examples/configs/ hold overrides only."""


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the file/override/key and what was expected."""


def exit_status(main: Callable[[], object], script: str) -> int:
    """The exit status of a script's ``main()`` (0 when it returns no status). A data error, a dataset file
    missing (``FileNotFoundError``) or malformed (:class:`~hf_personsearch.data.errors.DataFormatError`), or
    starting weights that cannot be had (:class:`~hf_personsearch.hub.export.WeightsUnavailableError`) prints its
    one-line message, which names the file or weights and what to do, instead of a traceback, and gives 2."""
    from ..data.errors import DataFormatError
    from ..hub.export import WeightsUnavailableError

    try:
        status = main()
    except (FileNotFoundError, DataFormatError) as error:
        print(f"{script}: data error: {error}", file=sys.stderr)
        return 2
    except WeightsUnavailableError as error:
        print(f"{script}: weights error: {error}", file=sys.stderr)
        return 2
    return status if isinstance(status, int) else 0


OPEN_SECTIONS = ("model", "data.synthetic_sizes")
"""Sections whose keys are not listed here: the model's config class and the synthetic writers check them."""


def _merge(base: dict, update: Mapping, where: str, path: str = "") -> dict:
    is_open = path.rstrip(".") in OPEN_SECTIONS or any(path.startswith(s + ".") for s in OPEN_SECTIONS)
    for key, value in update.items():
        full = f"{path}{key}"
        if is_open:
            if isinstance(base.get(key), dict) and isinstance(value, Mapping):
                _merge(base[key], value, where, full + ".")
            else:
                base[key] = copy.deepcopy(value)
            continue
        if key not in base:
            raise ConfigError(f"{where}: unknown key {full!r}; expected one of {sorted(base)} at this level")
        if isinstance(base[key], dict) and (base[key] or full in OPEN_SECTIONS) and isinstance(value, Mapping):
            _merge(base[key], value, where, full + ".")
        elif isinstance(base[key], dict) and not base[key] and value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"{where}: key {full!r} must be a mapping, got {value!r}")
        else:
            base[key] = copy.deepcopy(value) if not isinstance(value, Mapping) else dict(value)
    return base


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a number in exponent form without a dot (``lr: 1e-4``) is a float, as in YAML 1.2
    and Python; PyYAML's YAML 1.1 rules read it as the string "1e-4"."""


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def load_yaml(text: str):
    """``text`` parsed as a config's YAML (:class:`_ConfigLoader`)."""
    return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader subclass: plain data only


def parse_override(text: str) -> dict:
    """``"a.b.c=value"`` -> ``{"a": {"b": {"c": parsed value}}}`` (the value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. training.max_steps=20")
    key, raw = text.split("=", 1)
    parts = [part for part in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"override {text!r}: empty key part in {key!r}")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: value {raw!r} is not valid YAML ({error})") from error
    nested: dict = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def load_config(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    defaults: Mapping = PRETRAIN_DEFAULTS,
) -> dict:
    """The resolved config: ``defaults`` <- YAML file at ``path`` (optional) <- each override in order."""
    config = copy.deepcopy(dict(defaults))
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = load_yaml(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from error
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: expected a mapping of sections {sorted(config)}, got {type(loaded).__name__}")
        _merge(config, loaded, str(path))
    for text in overrides:
        _merge(config, parse_override(text), f"override {text!r}")
    training = config.get("training")
    if isinstance(training, dict) and training.get("mixed_precision") is False:
        # YAML 1.1 reads an unquoted ``no`` as false: ``mixed_precision: no`` and ``training.mixed_precision=no``
        # mean Accelerate's "no", not a boolean.
        training["mixed_precision"] = "no"
    return config


def save_resolved_config(config: Mapping, output_dir: str | Path, name: str = "resolved_config.yaml") -> Path:
    """Write the resolved config next to the outputs (what was really run, defaults included)."""
    path = Path(output_dir) / name
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


def flatten_config(config: Mapping, prefix: str = "") -> dict[str, int | float | str | bool]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` with lists/None as strings: the hparams trackers accept."""
    flat: dict[str, int | float | str | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def check_output_dir(output_dir: str | Path) -> Path:
    """Create ``output_dir`` and prove it is writable (a probe file), or raise naming the folder."""
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"training.output_dir {str(output_dir)!r} is not writable: {error}") from error
    return output_dir


def check_size_divisor(divisor: object, min_sizes: Sequence[int]) -> None:
    """Raise :class:`ConfigError` unless ``data.size_divisor`` is an integer from 1 to 0.4 x the smallest training
    size: more padding could change the feature stride RoIAlign infers from the batch's largest image
    (torchvision's rule, the nearest power of two to map height / image height; tested for every allowed height)."""
    smallest = min(min_sizes) if all(isinstance(size, (int, float)) for size in min_sizes) else 0
    if not isinstance(divisor, int) or isinstance(divisor, bool) or not 1 <= divisor <= max(1, 0.4 * smallest):
        raise ConfigError(
            f"data.size_divisor must be an integer from 1 to 0.4 x the smallest training size "
            f"({smallest}: at most {max(1, int(0.4 * smallest))}), got {divisor!r}; more padding could change the "
            f"feature stride RoIAlign infers from the batch's largest image"
        )


def check_training_section(config: Mapping) -> None:
    """Raise :class:`ConfigError` for loop settings that cannot run (both scripts' ``training`` and
    ``checkpointing`` sections); ``training.max_steps`` is each script's own (fine-tuning allows null)."""
    training, checkpointing = config["training"], config["checkpointing"]
    for where, value, minimum in (
        ("training.batch_size", training["batch_size"], 1),
        ("training.gradient_accumulation_steps", training["gradient_accumulation_steps"], 1),
        ("training.log_every", training["log_every"], 1),
        ("training.max_consecutive_nonfinite", training["max_consecutive_nonfinite"], 1),
        ("checkpointing.every", checkpointing["every"], 1),
        ("checkpointing.keep_last", checkpointing["keep_last"], 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"{where} must be an integer >= {minimum}, got {value!r}")
    if training["mixed_precision"] not in ("no", "bf16", "fp16"):
        raise ConfigError(
            f"training.mixed_precision must be 'no', 'bf16' or 'fp16', got {training['mixed_precision']!r}"
        )
    check_optimization_sections(config)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_optimization_sections(config: Mapping) -> None:
    """Raise :class:`ConfigError` naming the key for an ``optimizer`` or ``schedule`` value that
    :mod:`hf_personsearch.training.optim` cannot use, before any data is read or generated.
    ``schedule.warmup_steps`` may be null (fine-tuning reads it as one epoch)."""
    from .optim import OPTIMIZERS, SCHEDULES

    optimizer, schedule = config["optimizer"], config["schedule"]
    if str(optimizer.get("name")).lower() not in OPTIMIZERS:
        raise ConfigError(f"optimizer.name must be one of {OPTIMIZERS}, got {optimizer.get('name')!r}")
    if str(schedule.get("name")).lower() not in SCHEDULES:
        raise ConfigError(f"schedule.name must be one of {SCHEDULES}, got {schedule.get('name')!r}")
    for where, value, low, high, low_included, high_included in (
        ("optimizer.lr", optimizer.get("lr"), 0.0, math.inf, False, False),
        ("optimizer.weight_decay", optimizer.get("weight_decay", 0.0), 0.0, math.inf, True, False),
        ("optimizer.momentum", optimizer.get("momentum", 0.9), 0.0, 1.0, True, False),
        ("optimizer.eps", optimizer.get("eps", 1e-8), 0.0, math.inf, False, False),
        ("optimizer.bias_lr_factor", optimizer.get("bias_lr_factor", 1.0), 0.0, math.inf, False, False),
        ("schedule.warmup_factor", schedule.get("warmup_factor", 0.001), 0.0, 1.0, False, True),
        ("schedule.gamma", schedule.get("gamma", 0.1), 0.0, math.inf, False, False),
        ("schedule.min_lr_ratio", schedule.get("min_lr_ratio", 0.0), 0.0, 1.0, True, True),
    ):
        inside = _is_number(value) and (value >= low if low_included else value > low)
        inside = inside and (value <= high if high_included else value < high)
        if not inside:
            interval = f"{'[' if low_included else '('}{low:g}, {high:g}{']' if high_included else ')'}"
            raise ConfigError(f"{where} must be a number in {interval}, got {value!r}")
    betas = optimizer.get("betas", [0.9, 0.999])
    if not (isinstance(betas, Sequence) and len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas)):
        raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), got {betas!r}")
    warmup = schedule.get("warmup_steps", 0)
    if warmup is not None and (not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0):
        raise ConfigError(f"schedule.warmup_steps must be an integer >= 0, got {warmup!r}")
    milestones = schedule.get("milestones", [])
    if not (isinstance(milestones, Sequence) and not isinstance(milestones, str) and all(map(_is_number, milestones))):
        raise ConfigError(
            f"schedule.milestones must be a list of numbers (steps, or fractions of the run), got {milestones!r}"
        )


def build_argument_parser(description: str) -> argparse.ArgumentParser:
    """The command line both training scripts share (module docstring); a script may add its own flags.

    Parse with ``parse_intermixed_args`` so that overrides may come before or after the flags.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=str, default=None, help="YAML file of overrides of the defaults")
    parser.add_argument(
        "overrides", nargs="*", default=[], help="KEY=VALUE config overrides, e.g. training.max_steps=20"
    )
    parser.add_argument(
        "-o", "--override", action="append", default=[], help="one KEY=VALUE override (the same as a positional one)"
    )
    parser.add_argument("--output_dir", type=str, default=None, help="= training.output_dir")
    parser.add_argument("--max_steps", type=int, default=None, help="= training.max_steps")
    parser.add_argument("--seed", type=int, default=None, help="= training.seed")
    parser.add_argument(
        "--resume_from_checkpoint", type=str, default=None, help="'latest' (newest complete one) or a checkpoint path"
    )
    parser.add_argument(
        "--stop_after_steps",
        type=int,
        default=None,
        help="end this session (with a checkpoint) once this many optimiser steps are done in all; for time-limited "
        "job slots, continued with --resume_from_checkpoint latest",
    )
    return parser


def config_from_args(args: argparse.Namespace, defaults: Mapping, extra_overrides: Sequence[str] = ()) -> dict:
    """The resolved config of a command line: defaults <- ``--config`` <- positional overrides <- ``-o``
    overrides <- the flags (``--output_dir`` ...) <- ``extra_overrides`` (a script's own flags)."""
    overrides = [*args.overrides, *args.override]
    for flag, key in (
        ("output_dir", "training.output_dir"),
        ("max_steps", "training.max_steps"),
        ("seed", "training.seed"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    return load_config(args.config, [*overrides, *extra_overrides], defaults)
