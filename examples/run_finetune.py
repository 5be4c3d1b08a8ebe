"""Fine-tune a PersonSearchModel on PRW, CUHK-SYSU, PoseTrack21 or custom data, then evaluate it.

Usage (one process, GPU or CPU; multi-GPU with ``accelerate launch``)::

    accelerate launch examples/run_finetune.py --config examples/configs/finetune_prw.yaml \\
        data.data_dir=/data/PRW-v16.04.20 init.from=pretrained init.path=org/prtps-r50

The initialisations of the paper's Fig. 5 (``init.from``):

* ``scratch``: random weights everywhere;
* ``imagenet``: ImageNet backbone weights (``init.path``: a timm tag such as ``resnet50.tv_in1k``, fetched by
  timm, or a timm/torchvision weights file), heads random;
* ``pretrained_backbone``: the backbone of a pre-trained checkpoint (folder or hub id), heads re-initialised;
* ``pretrained``: the whole pre-trained model (backbone + RPN + detection and re-ID heads).

``data.train_fraction`` trains on a random fraction of the training images (Fig. 5's 10%..100%). With no
``data.data_dir`` the synthetic generator writes the dataset's raw format under ``<output_dir>/data`` first,
so the script runs anywhere. Bad input (unknown dataset, missing folders or checkpoint, unwritable output
folder, unknown config keys) stops the run before any model is built.

Outputs in ``training.output_dir``: the model (safetensors) + image processor, ``identity_map.json``
(OIM row -> dataset person id), ``resolved_config.yaml``, ``results.json`` (final evaluation and the
history of periodic ones), ``eval_results.json`` + ``training_info.json`` and the model card
``README.md`` with the results in its model-index.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hf_personsearch import PersonSearchConfig, PersonSearchImageProcessor, PersonSearchModel
from hf_personsearch.data.augmentation import SingleViewAugmentation
from hf_personsearch.data.collate import collate_search
from hf_personsearch.data.search_dataset import (
    SearchTrainingDataset,
    TargetIdentityMap,
    load_target_records,
    select_fraction,
    target_dataset,
)
from hf_personsearch.evaluation.model_inference import evaluate_on_target, resolve_gallery_size
from hf_personsearch.hub import is_timm_tag, load_backbone_weights
from hf_personsearch.training.config import (
    ConfigError,
    check_output_dir,
    flatten_config,
    load_config,
    save_resolved_config,
)
from hf_personsearch.training.optim import build_optimizer, build_scheduler

logger = logging.getLogger("run_finetune")

INIT_CHOICES = ("scratch", "imagenet", "pretrained_backbone", "pretrained")

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
        # Horizontal flip probability of the training view (NAE: 0.5).
        "flip_p": 0.5,
        # DataLoader workers: 2 keeps a GPU fed on full-size scenes without needing many cores.
        "num_workers": 2,
        # Raise on the first unreadable image instead of skipping and counting it.
        "strict": False,
    },
    "init": {"from": "scratch", "path": None},
    # PersonSearchConfig arguments (num_person_ids is always the training split's identity count).
    "model": {},
    "optimizer": {
        # NAE/SeqNet: SGD lr 0.003 (batch 5), momentum 0.9, weight decay 5e-4.
        "name": "sgd",
        "lr": 0.003,
        "momentum": 0.9,
        "weight_decay": 0.0005,
        "betas": [0.9, 0.999],
        "eps": 1.0e-8,
    },
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
        "output_dir": "outputs/finetune",
        "seed": 0,
        # NAE/SeqNet train 20 epochs; max_steps (optimiser steps) caps the run when set.
        "num_epochs": 20,
        "max_steps": None,
        # Images per process per forward (NAE/SeqNet: 5 per GPU).
        "batch_size": 5,
        "gradient_accumulation_steps": 1,
        "mixed_precision": "no",
        # NAE/SeqNet clip gradients at norm 10; 0/None = off.
        "max_grad_norm": 10.0,
        # Consecutive non-finite losses tolerated (each step skipped and counted) before the run stops.
        "max_consecutive_nonfinite": 5,
        "log_every": 10,
        # accelerate trackers, e.g. ["tensorboard"]; [] = no tracker.
        "report_to": [],
        "cpu": False,
        # Hub id written into the model card (its name and usage snippet); None = the output folder's name.
        "hub_model_id": None,
    },
    "evaluation": {
        # Evaluate every N epochs during training (0 = only at the end).
        "every_epochs": 0,
        # CUHK-SYSU TestG{N}; None = the dataset's standard protocol (TestG100), "full" = the full set.
        "gallery_size": None,
        # PRW / PoseTrack21: only other cameras in the gallery (the published tables: False).
        "cross_camera": False,
        # Detection score threshold of the search protocols (0.5 in every public codebase).
        "det_thresh": 0.5,
        # Gallery images per forward at evaluation.
        "batch_size": 2,
    },
}
"""Defaults of fine-tuning, each with its reason; YAML files in examples/configs/ hold overrides only."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML file of overrides of FINETUNE_DEFAULTS")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. training.num_epochs=2")
    return parser.parse_args(argv)


def check_config(config: dict) -> None:
    """Every problem that can be found without computing: raise :class:`ConfigError` naming the key."""
    data, init, training = config["data"], config["init"], config["training"]
    try:
        target_dataset(data["dataset"])
        resolve_gallery_size(data["dataset"], config["evaluation"]["gallery_size"])
        select_fraction(1, float(data["train_fraction"]), 0)
    except ValueError as error:
        raise ConfigError(f"data/evaluation: {error}") from error
    if data["data_dir"] is not None and not Path(data["data_dir"]).is_dir():
        raise ConfigError(f"data.data_dir {data['data_dir']!r} is not a folder (the raw {data['dataset']} dataset)")
    if init["from"] not in INIT_CHOICES:
        raise ConfigError(f"init.from must be one of {INIT_CHOICES}, got {init['from']!r}")
    if init["from"] != "scratch":
        if not init["path"]:
            raise ConfigError(
                f"init.from={init['from']!r} needs init.path (a weights file, checkpoint folder or hub id)"
            )
        path = Path(init["path"])
        if init["from"] == "imagenet" and not (path.is_file() or is_timm_tag(init["path"])):
            raise ConfigError(
                f"init.path {init['path']!r} is neither a file nor a timm tag such as resnet50.tv_in1k "
                "(ImageNet backbone weights)"
            )
        looks_local = path.is_absolute() or init["path"].startswith(".") or path.exists()
        if init["from"] != "imagenet" and looks_local and not (path / "config.json").is_file():
            raise ConfigError(f"init.path {init['path']!r} is not a saved model folder (no config.json there)")
    for key in ("num_epochs", "batch_size", "gradient_accumulation_steps"):
        if not isinstance(training[key], int) or training[key] < 1:
            raise ConfigError(f"training.{key} must be a positive integer, got {training[key]!r}")
    if training["max_steps"] is not None and (not isinstance(training["max_steps"], int) or training["max_steps"] < 1):
        raise ConfigError(f"training.max_steps must be a positive integer or null, got {training['max_steps']!r}")
    if "num_person_ids" in config["model"]:
        raise ConfigError("model.num_person_ids is set from the training split's identities; remove it")
    check_output_dir(training["output_dir"])


def prepare_data_dir(config: dict) -> str:
    """The raw dataset folder: ``data.data_dir``, or a synthetic one written under the output folder."""
    data = config["data"]
    if data["data_dir"] is not None:
        return str(data["data_dir"])
    from hf_personsearch.data.synthetic import generate

    folder = Path(config["training"]["output_dir"]) / "data" / data["dataset"]
    if not folder.is_dir() or not any(folder.iterdir()):
        generate(data["dataset"], folder, seed=int(config["training"]["seed"]), **data["synthetic_sizes"])
    return str(folder)


def build_model(config: dict, num_identities: int) -> PersonSearchModel:
    """The model of ``init.from`` with an OIM table of ``num_identities`` rows (paper Fig. 5 initialisations)."""
    init, overrides = config["init"], dict(config["model"])
    if init["from"] in ("scratch", "imagenet"):
        model = PersonSearchModel(PersonSearchConfig(num_person_ids=num_identities, **overrides))
        if init["from"] == "imagenet":
            report = load_backbone_weights(model, str(init["path"]))
            logger.info(
                "backbone starts from %s (%d tensors; ignored: %s)",
                report.source,
                len(report.loaded_keys),
                report.ignored_keys,
            )
        return model
    queue_size = overrides.pop("oim_queue_size", None)
    return PersonSearchModel.from_pretrained(
        init["path"],
        backbone_only=init["from"] == "pretrained_backbone",
        num_person_ids=num_identities,
        oim_queue_size=queue_size,
        dtype=torch.float32,
        **overrides,
    )


def evaluate(model, config: dict, data_dir: str, progress: bool) -> dict:
    """Evaluation on the dataset's gallery split with the configured protocol (JSON-ready summary)."""
    evaluation, data = config["evaluation"], config["data"]
    processor = PersonSearchImageProcessor(min_size=data["min_size"], max_size=data["max_size"])
    summary, _ = evaluate_on_target(
        model,
        processor,
        data["dataset"],
        data_dir,
        gallery_size=evaluation["gallery_size"],
        cross_camera=bool(evaluation["cross_camera"]),
        det_thresh=float(evaluation["det_thresh"]),
        batch_size=int(evaluation["batch_size"]),
        progress=progress,
    )
    summary.pop("search")
    summary.pop("detection")
    return summary


def write_outputs(model, config: dict, output_dir: Path, final: dict, history: list, info: dict) -> None:
    """Model + processor, results and the model card (its model-index holds ``final``)."""
    data = config["data"]
    model.save_pretrained(output_dir)
    PersonSearchImageProcessor(min_size=data["min_size"], max_size=data["max_size"]).save_pretrained(output_dir)
    (output_dir / "results.json").write_text(json.dumps({"final": final, "history": history}, indent=2))
    card_result = {key: value for key, value in final.items() if key not in ("epoch", "step")}
    (output_dir / "eval_results.json").write_text(json.dumps([card_result], indent=2))
    (output_dir / "training_info.json").write_text(json.dumps({"kind": "finetuned", **info}, indent=2))
    try:
        from hf_personsearch.hub.model_card import refresh_model_card
    except ImportError:
        logger.warning("hf_personsearch.hub.model_card is not available: no model card written")
        return
    refresh_model_card(output_dir, kind="finetuned", repo_id=config["training"]["hub_model_id"])


def main(argv: list[str] | None = None) -> dict:
    """Run fine-tuning; returns the final evaluation summary (also in results.json)."""
    args = parse_args(argv)
    config = load_config(args.config, args.overrides, defaults=FINETUNE_DEFAULTS)
    check_config(config)
    data, training = config["data"], config["training"]
    output_dir = Path(training["output_dir"])

    accelerator = Accelerator(
        cpu=bool(training["cpu"]),
        mixed_precision=training["mixed_precision"],
        gradient_accumulation_steps=training["gradient_accumulation_steps"],
        log_with=list(training["report_to"]) or None,
        project_dir=str(output_dir),
    )
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    set_seed(int(training["seed"]))
    if accelerator.is_main_process:
        data_dir = prepare_data_dir(config)
        save_resolved_config(config, output_dir)
    accelerator.wait_for_everyone()
    data_dir = prepare_data_dir(config)

    target = target_dataset(data["dataset"])
    all_records = load_target_records(data["dataset"], data_dir, target.train_split, strict=bool(data["strict"]))
    identity_map = TargetIdentityMap.from_records(all_records)
    if identity_map.num_identities == 0:
        raise ConfigError(f"{data['dataset']} {target.train_split} split in {data_dir} has no labeled person")
    chosen = select_fraction(len(all_records), float(data["train_fraction"]), int(data["fraction_seed"]))
    records = [all_records[i] for i in chosen]
    dataset = SearchTrainingDataset(
        records,
        identity_map=identity_map,
        augmentation=SingleViewAugmentation(
            min_size=data["min_size"], max_size=data["max_size"], flip_p=data["flip_p"]
        ),
        strict=bool(data["strict"]),
    )
    loader = DataLoader(
        dataset,
        batch_size=training["batch_size"],
        shuffle=True,
        collate_fn=collate_search,
        num_workers=int(data["num_workers"]),
        generator=torch.Generator().manual_seed(int(training["seed"])),
    )
    model = build_model(config, identity_map.num_identities)
    optimizer = build_optimizer(model, config["optimizer"])
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    steps_per_epoch = max(1, math.ceil(len(loader) / training["gradient_accumulation_steps"]))
    max_steps = steps_per_epoch * training["num_epochs"]
    if training["max_steps"] is not None:
        max_steps = min(max_steps, training["max_steps"])
    schedule = dict(config["schedule"])
    if schedule["warmup_steps"] is None:
        schedule["warmup_steps"] = min(steps_per_epoch, max_steps)
    # Stepped by hand once per optimiser step (not prepared: accelerate would step it once per process).
    scheduler = build_scheduler(optimizer, schedule, max_steps)
    if accelerator.is_main_process:
        logger.info(
            "fine-tuning on %s: %d/%d training images, %d identities, init %s, %d steps",
            target.display_name,
            len(records),
            len(all_records),
            identity_map.num_identities,
            config["init"]["from"],
            max_steps,
        )
        identity_map.save(output_dir / "identity_map.json")
    if training["report_to"]:
        accelerator.init_trackers("finetune", config=flatten_config(config))

    history: list[dict] = []
    step, nonfinite, consecutive_nonfinite = 0, 0, 0
    started = time.time()
    bar = tqdm(total=max_steps, desc="fine-tuning", disable=not accelerator.is_main_process)
    epoch = 0
    while step < max_steps:
        model.train()
        for batch in loader:
            with accelerator.accumulate(model):
                output = model(**batch)
                finite = torch.isfinite(output.loss).float()
                if accelerator.reduce(finite, reduction="sum").item() < accelerator.num_processes:
                    nonfinite += 1
                    consecutive_nonfinite += 1
                    optimizer.zero_grad()
                    logger.warning("non-finite loss at step %d: step skipped (%d so far)", step, nonfinite)
                    if consecutive_nonfinite >= training["max_consecutive_nonfinite"]:
                        raise RuntimeError(
                            f"{consecutive_nonfinite} consecutive non-finite losses (last: "
                            f"{ {k: float(v) for k, v in output.loss_dict.items()} }); lower optimizer.lr or check "
                            "the data"
                        )
                    continue
                consecutive_nonfinite = 0
                accelerator.backward(output.loss)
                if accelerator.sync_gradients and training["max_grad_norm"]:
                    accelerator.clip_grad_norm_(model.parameters(), training["max_grad_norm"])
                optimizer.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            bar.update(1)
            terms = {name: value.detach().item() for name, value in output.loss_dict.items()}
            bar.set_postfix(loss=f"{output.loss.detach().item():.3f}")
            if step % training["log_every"] == 0 or step == max_steps:
                logs = {"loss": output.loss.detach().item(), "lr": scheduler.get_last_lr()[0], **terms}
                if training["report_to"]:
                    accelerator.log(logs, step=step)
            if step >= max_steps:
                break
        epoch += 1
        every = int(config["evaluation"]["every_epochs"])
        if every and epoch % every == 0 and step < max_steps:
            if accelerator.is_main_process:
                result = evaluate(accelerator.unwrap_model(model), config, data_dir, progress=False)
                history.append({"epoch": epoch, "step": step, **result})
                logger.info("epoch %d: mAP %.4f top-1 %.4f", epoch, result["mAP"], result.get("top1", 0.0))
            accelerator.wait_for_everyone()
    bar.close()
    accelerator.wait_for_everyone()
    final: dict = {}
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        final = {"epoch": epoch, "step": step, **evaluate(unwrapped, config, data_dir, progress=True)}
        history.append(final)
        info = {
            "dataset": target.display_name,
            "data": data_dir if data["data_dir"] else f"synthetic {data['dataset']} (generated)",
            "initialisation": config["init"]["from"]
            + (f" ({config['init']['path']})" if config["init"]["path"] else ""),
            "training images": f"{len(records)} of {len(all_records)} (fraction {data['train_fraction']})",
            "identities": identity_map.num_identities,
            "steps": step,
            "epochs": epoch,
            "batch size": training["batch_size"] * accelerator.num_processes * training["gradient_accumulation_steps"],
            "skipped non-finite steps": nonfinite,
            "skipped unreadable images": dataset.skips.total,
            "hardware": f"{accelerator.num_processes} x {accelerator.device.type} ({platform.machine()})",
            "training time (s)": round(time.time() - started, 1),
        }
        write_outputs(unwrapped, config, output_dir, final, history, info)
        print(
            f"{target.display_name}: mAP {100 * final['mAP']:.2f}  top-1 {100 * final.get('top1', 0):.2f}  "
            f"-> {output_dir}"
        )
    if training["report_to"]:
        accelerator.end_training()
    return final


if __name__ == "__main__":
    try:
        main()
    except ConfigError as error:
        sys.exit(f"error: {error}")
