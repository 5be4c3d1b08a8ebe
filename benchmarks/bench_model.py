"""PersonSearchModel cost, as ratios against baselines measured in the same run.

1. Train step (forward + backward) and inference of the full model vs the backbone alone (forward +
   backward of the whole timm feature network on the same batch), for test_resnet and resnet50 (CPU).
2. Inference, plain vs optimised, side by side (CPU, ``--inference-size``, default 900x1500 bs1 like the
   issue's comparison with SeqNet): "plain" runs the backbone's modules as built (``fold_batchnorm = False``);
   "optimised" is the default inference (the backbone's inference copy: BatchNorms folded into the
   convolutions, residual sums in place, channels_last weights, layer4's leading 1x1 convolutions on the map);
   also the optimised path under ``torch.inference_mode``, under bf16 autocast, and with ``--compile`` under
   ``torch.compile`` (compile time printed apart). Variants run interleaved (each repeat runs every variant
   once), so load from other processes hits them alike; the best of ``--repeats`` is kept. Each variant's
   detections are compared with the plain ones (matched box to box).
3. OIM step (loss + update) time and table memory at 10k, 100k and 1M identities, vs 10k.
4. Only when CUDA is available: resnet50, bs 5, 900x1500, bf16 autocast: train step and inference (plain and
   optimised) images/s and peak GPU memory.

``--seqnet DIR`` (a checkout of SeqNet's public code, https://github.com/serend1p1ty/SeqNet, and ``pip install
yacs``) adds SeqNet, the baseline of issue 15, to section 2 (one more interleaved variant: measured ratios instead
of the derived one) and to section 4 (train step and inference, same batch, same precision). SeqNet is built from
its own ``defaults.py``; its ResNet-50 asks torchvision for ImageNet weights, which this script replaces by random
ones (nothing is downloaded; a timing needs no trained weights), and its BatchNorm statistics are set up as
``benchmark_model``'s. SeqNet runs layer4 twice: on the 300 proposals, then on the boxes its first stage keeps
(score over 0.5, NMS). With random weights no first-stage score passes 0.5 and the second pass is skipped, which
makes SeqNet cheaper than it is on real photos. So SeqNet runs twice: as it is (0 boxes: a lower bound of its cost)
and with its first stage made to keep its ``--seqnet-boxes`` top-scored boxes (default 10: a trained detector keeps
the persons of a frame and a few false positives; PRW has 3.6 annotated persons a frame, CUHK-SYSU 5.3). Its
inference takes one image a call (its test batch size is 1: its second stage reads the first image's scores only).

``--map-model FOLDER --map-data PRW_FOLDER`` adds the accuracy check of the inference variants: search mAP,
top-1 and detection AP of a saved model on a PRW-format folder (e.g. the synthetic PRW of
``bench_pretraining.py``), plain fp32 vs optimised fp32 vs optimised bf16 autocast.

Usage: python benchmarks/bench_model.py --threads 1 [--size 512x384] [--batch 2] [--repeats 3] [--skip-resnet50]
       [--inference-size 900x1500] [--compile] [--map-model DIR --map-data DIR]
       python benchmarks/bench_model.py --cuda-only [--repeats 5] [--seqnet DIR]   (section 4 alone, on a GPU)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import os
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d, box_iou

from hf_personsearch import PersonSearchConfig, PersonSearchModel
from hf_personsearch.oim import OIMLoss

SEQNET_RATIO_OF_PLAIN = 0.85
"""Our plain inference time / SeqNet's, R50 900x1500 bs1 one thread, measured with ``--seqnet`` on the 2-core
benchmark machine (SeqNet keeping 10 boxes; 0.84-0.87 with its second pass skipped). Without ``--seqnet`` the
optimised / SeqNet line is DERIVED as (optimised / plain) x 0.85, not re-measured."""


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved_best_times(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best time of each variant over ``repeats`` rounds, each round running every variant once (after one
    warm-up call each)."""
    for fn in variants.values():
        fn()
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def benchmark_model(backbone: str) -> PersonSearchModel:
    """A model whose BatchNorms (the backbone's frozen ones and the heads') are set up like a trained
    network's: each one's running statistics are those of its input on a random image (it normalises to mean
    0 / variance 1, as in training), the backbone's affine terms random around the identity. Random init alone
    leaves mean 0 / variance 1 (folding would have nothing to fold, every detection score is 1.0) and random
    statistics make ResNet-50's activations overflow (no detections). Score threshold 0, so that the random
    model keeps detections to compare (the 300 proposals go through the box head either way)."""
    torch.manual_seed(0)
    config = PersonSearchConfig(backbone=backbone, num_person_ids=1000, freeze_batchnorm=True, box_score_thresh=0.0)
    model = PersonSearchModel(config).eval()
    model.backbone.fold_batchnorm = False  # the hooks sit on the modules as built
    calibrate_batchnorms(model, lambda: model(torch.randn(1, 3, 512, 512)))
    model.backbone.fold_batchnorm = True
    return model


def calibrate_batchnorms(model: nn.Module, forward: Callable[[], object]) -> None:
    """Set every BatchNorm of an eval-mode ``model`` up like a trained network's (``benchmark_model``): the
    2-d ones' affine terms random around the identity, every one's running statistics those of its input in one
    ``forward()`` call."""

    def measure_statistics(norm, inputs):
        dims = [dim for dim in range(inputs[0].dim()) if dim != 1]  # all but the channels
        norm.running_mean.copy_(inputs[0].mean(dims))
        norm.running_var.copy_(inputs[0].var(dims))

    hooks = []
    with torch.no_grad():
        for norm in model.modules():
            if isinstance(norm, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                norm.weight.copy_(0.5 + torch.rand(norm.weight.shape))
                norm.bias.copy_(0.1 * torch.randn(norm.bias.shape))
            if isinstance(norm, (FrozenBatchNorm2d, nn.BatchNorm2d, nn.BatchNorm1d)):
                hooks.append(norm.register_forward_pre_hook(measure_statistics))
        forward()
    for hook in hooks:
        hook.remove()


def load_seqnet(folder: str) -> nn.Module:
    """SeqNet (module docstring) from a checkout of its code: its default config, random ResNet-50 weights,
    BatchNorms calibrated, eval mode. Its modules are imported from ``folder`` (``models``, ``defaults``)."""
    import torchvision

    sys.path.insert(0, os.path.abspath(folder))
    try:
        defaults = importlib.import_module("defaults")
        seqnet = importlib.import_module("models.seqnet")
    except ImportError as error:
        raise SystemExit(f"--seqnet {folder}: cannot import SeqNet's defaults / models.seqnet ({error})") from error
    builders = torchvision.models.resnet.__dict__
    resnet50 = builders["resnet50"]
    builders["resnet50"] = lambda pretrained=False, **kwargs: resnet50(weights=None, **kwargs)  # nothing downloaded
    try:
        torch.manual_seed(0)
        model = seqnet.SeqNet(defaults.get_default_cfg()).eval()
    finally:
        builders["resnet50"] = resnet50
    calibrate_batchnorms(model, lambda: model([torch.rand(3, 512, 512)]))
    return model


def keep_first_stage_boxes(seqnet: nn.Module, count: int) -> None:
    """Make SeqNet's first stage give its ``count`` top-scored boxes of each image (after its NMS) to the second
    pass whatever their scores (module docstring)."""
    heads = seqnet.roi_heads
    postprocess = heads.postprocess_proposals

    def top_scored(class_logits, box_regression, proposals, image_shapes):
        threshold, heads.score_thresh = heads.score_thresh, 0.0
        try:
            boxes, scores, labels = postprocess(class_logits, box_regression, proposals, image_shapes)
        finally:
            heads.score_thresh = threshold
        return [b[:count] for b in boxes], [v[:count] for v in scores], [v[:count] for v in labels]

    heads.postprocess_proposals = top_scored


def count_second_pass_boxes(seqnet: nn.Module) -> Callable[[], int]:
    """Hook SeqNet's second pass (its re-ID head's layer4); the returned function gives the boxes of the last call."""
    seen = [0]
    seqnet.roi_heads.reid_head.register_forward_pre_hook(lambda module, inputs: seen.__setitem__(0, len(inputs[0])))
    return lambda: seen[0]


def model_figures(backbone: str, height: int, width: int, batch: int, repeats: int) -> None:
    model = benchmark_model(backbone)
    pixel_values = torch.randn(batch, 3, height, width)
    labels = [
        {
            "boxes": torch.tensor([[40.0, 30.0, 140.0, 330.0], [200.0, 60.0, 300.0, 360.0]]),
            "person_ids": torch.tensor([1, -1]),
        }
        for _ in range(batch)
    ]

    def backbone_step():
        features = model.backbone.body(pixel_values)
        sum(f.float().mean() for f in features).backward()

    def train_step():
        model.train()
        model(pixel_values, labels=labels).loss.backward()

    def inference():
        model.eval()
        with torch.no_grad():
            model(pixel_values)

    def backbone_inference():
        with torch.no_grad():
            model.backbone.body(pixel_values)

    base_train = best_time(backbone_step, repeats)
    full_train = best_time(train_step, repeats)
    base_infer = best_time(backbone_inference, repeats)
    full_infer = best_time(inference, repeats)
    print(
        f"{backbone:12s} {batch}x{height}x{width}: train step {full_train * 1000:8.1f} ms "
        f"(backbone fwd+bwd {base_train * 1000:8.1f} ms, ratio {full_train / base_train:5.2f}) | "
        f"inference {full_infer * 1000:8.1f} ms (backbone fwd {base_infer * 1000:8.1f} ms, ratio {full_infer / base_infer:5.2f})"
    )


def detection_differences(reference, other) -> str:
    """How far ``other``'s detections are from ``reference``'s: each reference box matched to the other's box
    of highest IoU; the largest box (pixels), score and embedding differences over the matches."""
    worst = {"box": 0.0, "score": 0.0, "embedding": 0.0}
    matched = total = 0
    for boxes, scores, embeddings, o_boxes, o_scores, o_embeddings in zip(
        reference.boxes, reference.scores, reference.embeddings, other.boxes, other.scores, other.embeddings
    ):
        total += len(boxes)
        if len(boxes) == 0 or len(o_boxes) == 0:
            continue
        iou, index = box_iou(boxes, o_boxes.float()).max(dim=1)
        keep = iou > 0.9
        matched += int(keep.sum())
        pairs = {
            "box": (boxes[keep], o_boxes[index[keep]]),
            "score": (scores[keep], o_scores[index[keep]]),
            "embedding": (embeddings[keep], o_embeddings[index[keep]]),
        }
        for key, (a, b) in pairs.items():
            if len(a):
                worst[key] = max(worst[key], (a.float() - b.float()).abs().max().item())
    return (
        f"{matched}/{total} detections matched (IoU > 0.9), max |diff| box {worst['box']:.2e} px, "
        f"score {worst['score']:.2e}, embedding {worst['embedding']:.2e}"
    )


@contextlib.contextmanager
def no_grad_bf16():
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        yield


def inference_figures(
    backbone: str,
    height: int,
    width: int,
    batch: int,
    repeats: int,
    compile_: bool,
    seqnet_folder: str | None = None,
    seqnet_boxes: int = 10,
) -> None:
    model = benchmark_model(backbone).eval()
    pixel_values = torch.randn(batch, 3, height, width)
    outputs = {}

    def run(name: str, fold: bool, mode: Callable[[], contextlib.AbstractContextManager], target=model):
        def fn():
            target.backbone.fold_batchnorm = fold
            with mode():
                outputs[name] = target(pixel_values)

        return fn

    variants = {
        "plain": run("plain", False, torch.no_grad),
        "optimised": run("optimised", True, torch.no_grad),
        "optimised + inference_mode": run("optimised + inference_mode", True, torch.inference_mode),
        "optimised + bf16 autocast": run("optimised + bf16 autocast", True, no_grad_bf16),
    }
    compile_seconds = None
    if compile_:
        compiled = copy.deepcopy(model)
        compiled.backbone.compile_inference = True
        start = time.perf_counter()
        run("optimised + torch.compile", True, torch.no_grad, compiled)()  # compiles
        compile_seconds = time.perf_counter() - start
        variants["optimised + torch.compile"] = run("optimised + torch.compile", True, torch.no_grad, compiled)
    with_seqnet = seqnet_folder is not None and backbone == "resnet50"
    if with_seqnet:
        seqnets = {"SeqNet": load_seqnet(seqnet_folder), f"SeqNet, {seqnet_boxes} boxes": load_seqnet(seqnet_folder)}
        keep_first_stage_boxes(seqnets[f"SeqNet, {seqnet_boxes} boxes"], seqnet_boxes)
        second_pass_boxes = {name: count_second_pass_boxes(seqnet) for name, seqnet in seqnets.items()}
        images = list(torch.rand(batch, 3, height, width))  # SeqNet normalises 0-1 images itself

        def seqnet_inference(seqnet):
            def fn():
                with torch.no_grad():
                    for image in images:  # its test batch size (module docstring)
                        seqnet([image])

            return fn

        variants.update({name: seqnet_inference(seqnet) for name, seqnet in seqnets.items()})
    times = interleaved_best_times(variants, repeats)
    plain = times["plain"]
    print(
        f"{backbone:12s} inference {batch}x{height}x{width}, best of {repeats} interleaved "
        f"(load average {os.getloadavg()[0]:.1f}):"
    )
    for name, seconds in times.items():
        line = f"  {name:28s} {seconds * 1000:9.1f} ms  ratio to plain {seconds / plain:5.2f}"
        if name.startswith("SeqNet"):
            line += f"  | its second pass took {second_pass_boxes[name]()} boxes through layer4 (after 300 proposals)"
        elif name != "plain":
            line += f"  | {detection_differences(outputs['plain'], outputs[name])}"
        print(line)
    if compile_seconds is not None:
        print(f"  torch.compile: first call (compilation) {compile_seconds:.1f} s")
    if with_seqnet:
        for seqnet_name in seqnets:
            print(
                f"  vs {seqnet_name} (measured in this run): "
                + ", ".join(
                    f"{name} {seconds / times[seqnet_name]:.2f}x"
                    for name, seconds in times.items()
                    if not name.startswith("SeqNet")
                )
            )
    elif backbone == "resnet50" and (height, width, batch) == (900, 1500, 1):
        print(
            f"  vs SeqNet (DERIVED, not re-measured: plain = {SEQNET_RATIO_OF_PLAIN}x SeqNet, measured with --seqnet): "
            f"optimised {times['optimised'] / plain * SEQNET_RATIO_OF_PLAIN:.2f}x SeqNet's inference"
        )


def map_figures(model_folder: str, prw_folder: str) -> None:
    """Search mAP / top-1 / detection AP of the saved model on the PRW folder, per inference variant."""
    from hf_personsearch import PersonSearchImageProcessor
    from hf_personsearch.evaluation.model_inference import evaluate_on_target

    model = PersonSearchModel.from_pretrained(model_folder, dtype=torch.float32).eval()
    processor = PersonSearchImageProcessor.from_pretrained(model_folder)
    settings = {
        "plain fp32": (False, contextlib.nullcontext),
        "optimised fp32": (True, contextlib.nullcontext),
        "optimised bf16 autocast": (True, lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
    }
    results = {}
    for name, (fold, precision) in settings.items():
        model.backbone.fold_batchnorm = fold
        with precision():
            summary, _ = evaluate_on_target(model, processor, "prw", prw_folder, progress=False)
        results[name] = (summary["mAP"], summary["top1"], summary["detection_ap"])
    base = results["plain fp32"]
    print(f"accuracy on {prw_folder} ({model_folder}):")
    for name, (map_, top1, det_ap) in results.items():
        print(
            f"  {name:24s} mAP {map_:.4f} ({map_ - base[0]:+.4f})  top-1 {top1:.4f} ({top1 - base[1]:+.4f})  "
            f"detection AP {det_ap:.4f} ({det_ap - base[2]:+.4f})"
        )


def oim_figures(repeats: int) -> None:
    batch_features = F.normalize(torch.randn(256, 256), dim=1)  # 5 images x ~50 persons, 256-d
    results = {}
    for size in (10_000, 100_000, 1_000_000):
        oim = OIMLoss(256, size, queue_size=5000).train()
        oim.lut.copy_(F.normalize(torch.randn(size, 256), dim=1))
        ids = torch.randint(0, size, (256,))
        ids[::4] = -1
        features = batch_features.clone().requires_grad_()

        def step(oim=oim, ids=ids, features=features):
            oim(features, ids).backward()

        seconds = best_time(step, repeats)
        megabytes = (oim.lut.numel() + oim.queue.numel()) * 4 / 2**20
        results[size] = (seconds, megabytes)
    base = results[10_000][0]
    for size, (seconds, megabytes) in results.items():
        print(
            f"OIM {size:>9,d} ids: step {seconds * 1000:8.1f} ms (x{seconds / base:6.1f} vs 10k), "
            f"tables {megabytes:8.1f} MiB"
        )


def cuda_figures(
    repeats: int,
    batch: int = 5,
    height: int = 900,
    width: int = 1500,
    seqnet_folder: str | None = None,
    seqnet_boxes: int = 10,
) -> None:
    """resnet50 on the GPU under bf16 autocast and in fp32: train step and inference images/s and peak memory, and
    SeqNet's with ``seqnet_folder``. SeqNet's train step runs in fp32 only: its OIM's backward multiplies the
    autocast gradient (bf16) with its fp32 tables and fails under bf16 autocast (it casts fp16 alone)."""
    device = torch.device("cuda")
    model = benchmark_model("resnet50").to(device)
    pixel_values = torch.randn(batch, 3, height, width, device=device)
    labels = [
        {
            "boxes": torch.tensor([[40.0, 30.0, 140.0, 330.0], [200.0, 60.0, 300.0, 360.0]], device=device),
            "person_ids": torch.tensor([1, -1], device=device),
        }
        for _ in range(batch)
    ]
    precisions = {"bf16": lambda: torch.autocast("cuda", dtype=torch.bfloat16), "fp32": contextlib.nullcontext}

    def train_step(precision):
        def fn():
            model.train()
            model.zero_grad(set_to_none=True)
            with precisions[precision]():
                loss = model(pixel_values, labels=labels).loss
            loss.backward()

        return fn

    def inference(fold: bool, precision):
        def fn():
            model.eval()
            model.backbone.fold_batchnorm = fold
            with torch.no_grad(), precisions[precision]():
                model(pixel_values)

        return fn

    variants = {}
    for precision in precisions:
        variants[f"train step, {precision}"] = train_step(precision)
        variants[f"inference plain, {precision}"] = inference(False, precision)
        variants[f"inference optimised, {precision}"] = inference(True, precision)
    if seqnet_folder is not None:
        seqnet = load_seqnet(seqnet_folder).to(device)
        keep_first_stage_boxes(seqnet, seqnet_boxes)
        second_pass_boxes = count_second_pass_boxes(seqnet)
        images = list(torch.rand(batch, 3, height, width, device=device))
        # SeqNet's labels: 1..5532 labeled identities, 5555 an unlabeled person (its OIM's ignore index + 1)
        targets = [{"boxes": label["boxes"], "labels": torch.tensor([2, 5555], device=device)} for label in labels]

        def seqnet_train_step():
            seqnet.train()
            seqnet.zero_grad(set_to_none=True)
            sum(seqnet(images, targets).values()).backward()

        def seqnet_inference(precision):
            def fn():
                seqnet.eval()
                with torch.no_grad(), precisions[precision]():
                    for image in images:  # its test batch size (module docstring)
                        seqnet([image])

            return fn

        variants["SeqNet train step, fp32"] = seqnet_train_step
        for precision in precisions:
            variants[f"SeqNet inference, {precision}"] = seqnet_inference(precision)
    print(f"CUDA {torch.cuda.get_device_name(device)}, resnet50 {batch}x{height}x{width}, best of {repeats}:")
    seconds = {}
    for name, fn in variants.items():

        def synchronised(fn=fn):
            fn()
            torch.cuda.synchronize(device)

        synchronised()
        torch.cuda.reset_peak_memory_stats(device)
        seconds[name] = best_time(synchronised, repeats)
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        print(f"  {name:30s} {batch / seconds[name]:8.1f} img/s  peak memory {peak:6.2f} GiB")
    if seqnet_folder is not None:
        ratios = [f"train step fp32 {seconds['train step, fp32'] / seconds['SeqNet train step, fp32']:.2f}x"]
        for precision in precisions:
            for kind in ("plain", "optimised"):
                ratio = seconds[f"inference {kind}, {precision}"] / seconds[f"SeqNet inference, {precision}"]
                ratios.append(f"inference {kind} {precision} {ratio:.2f}x")
        print(f"  time vs SeqNet's (measured in this run): {', '.join(ratios)}")
        print(
            f"  SeqNet's first stage kept its {seqnet_boxes} top-scored boxes (--seqnet-boxes); its second pass "
            f"took {second_pass_boxes()} boxes through layer4 in its last inference call (one image)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="512x384", help="input HEIGHTxWIDTH (default 512x384: CPU-sized)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--inference-size", default="900x1500", help="HEIGHTxWIDTH of the inference comparison")
    parser.add_argument("--inference-batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-resnet50", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compilation)")
    parser.add_argument("--map-model", help="saved PersonSearchModel folder for the accuracy check")
    parser.add_argument("--map-data", help="PRW-format folder for the accuracy check")
    parser.add_argument("--cuda-only", action="store_true", help="only the GPU figures (section 4)")
    parser.add_argument("--seqnet", metavar="DIR", help="checkout of SeqNet's code: measure it side by side")
    parser.add_argument(
        "--seqnet-boxes", type=int, default=10, help="boxes SeqNet's first stage keeps (module docstring)"
    )
    args = parser.parse_args()
    if args.cuda_only:
        if not torch.cuda.is_available():
            parser.error("--cuda-only: CUDA is not available on this machine")
        cuda_figures(args.repeats, seqnet_folder=args.seqnet, seqnet_boxes=args.seqnet_boxes)
        return
    if (args.map_model is None) != (args.map_data is None):
        parser.error("--map-model and --map-data go together")
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.split("x"))
    inference_height, inference_width = (int(v) for v in args.inference_size.split("x"))
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), CPU; load average at start "
        f"{os.getloadavg()[0]:.1f} ({os.cpu_count()} cores: other processes slow every variant alike)"
    )
    backbones = ["test_resnet"] + ([] if args.skip_resnet50 else ["resnet50"])
    for backbone in backbones:
        model_figures(backbone, height, width, args.batch, args.repeats)
    for backbone in backbones:
        inference_figures(
            backbone,
            inference_height,
            inference_width,
            args.inference_batch,
            args.repeats,
            args.compile,
            args.seqnet,
            args.seqnet_boxes,
        )
    oim_figures(args.repeats)
    if args.map_model:
        map_figures(args.map_model, args.map_data)
    if torch.cuda.is_available():
        cuda_figures(args.repeats, seqnet_folder=args.seqnet, seqnet_boxes=args.seqnet_boxes)
    else:
        print("CUDA: not available, GPU figures skipped")


if __name__ == "__main__":
    main()
