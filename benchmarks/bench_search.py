"""Gallery embedding throughput and search latency of the person-search pipeline.

    .venv/bin/python benchmarks/bench_search.py                       # tiny model, 10k/100k/1M boxes
    .venv/bin/python benchmarks/bench_search.py --backbone resnet50 --min-size 900 --max-size 1500 --images 8

1. Embedding: images/s of ``PersonSearchPipeline.build_index`` on synthetic scenes (random weights: speed does
   not depend on them), for the chosen backbone and image size.
2. Search: latency per query of exact search over N gallery boxes (random unit embeddings of the model's
   dimension), torch (matmul + topk) and FAISS (flat inner-product index) when installed, with the ratio
   torch / FAISS measured in the same run, and whether both returned the same top-k.

Prints numbers only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hf_personsearch import PersonSearchConfig, PersonSearchImageProcessor, PersonSearchModel
from hf_personsearch.data.synthetic.render import render_scene
from hf_personsearch.pipelines import GalleryIndex, PersonSearchPipeline, faiss_available


def _best_of(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_embedding(args) -> None:
    torch.manual_seed(0)
    config = PersonSearchConfig(
        backbone=args.backbone, num_person_ids=8, oim_queue_size=8, rpn_post_nms_top_n_test=100
    )
    model = PersonSearchModel(config).eval()
    processor = PersonSearchImageProcessor(min_size=args.min_size, max_size=args.max_size)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    search = PersonSearchPipeline(model=model, image_processor=processor, device=device)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        for index in range(args.images):
            image, _ = render_scene([index % 8, 8 + index % 8], width=640, height=480, domain=index % 2, rng=rng)
            image.save(Path(folder) / f"{index:04d}.png")
        search.build_index(folder, threshold=0.0, batch_size=args.batch_size, progress=False)  # warm-up
        seconds = _best_of(
            lambda: search.build_index(folder, threshold=0.0, batch_size=args.batch_size, progress=False), 2
        )
    print(
        f"embedding: {args.backbone}, {args.images} scenes 640x480 -> min_size {args.min_size}/max_size "
        f"{args.max_size}, batch {args.batch_size}, {device}: {args.images / seconds:.1f} images/s"
    )


def bench_search(args) -> None:
    dim, top_k, queries = args.dim, args.top_k, args.queries
    generator = torch.Generator().manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(queries, dim, generator=generator), dim=1)
    print(f"search: {queries} queries, top-{top_k}, dimension {dim}, {torch.get_num_threads()} threads")
    print(f"{'boxes':>9}  {'torch ms/query':>14}  {'faiss ms/query':>14}  {'torch/faiss':>11}  same top-k")
    for size in args.sizes:
        embeddings = torch.nn.functional.normalize(torch.randn(size, dim, generator=generator), dim=1)
        index = GalleryIndex(
            embeddings=embeddings,
            boxes=torch.zeros(size, 4),
            scores=torch.ones(size),
            image_index=torch.zeros(size, dtype=torch.long),
            images=["bench"],
            model_id="bench",
            model_fingerprint="bench",
        )
        torch_seconds = _best_of(lambda index=index: index.search(query, top_k, backend="torch"), args.repeats)
        line = f"{size:>9}  {1000 * torch_seconds / queries:>14.3f}"
        if faiss_available():
            index.search(query[:1], top_k, backend="faiss")  # builds the FAISS index outside the timing
            faiss_seconds = _best_of(lambda index=index: index.search(query, top_k, backend="faiss"), args.repeats)
            same = torch.equal(index.search(query, top_k, "torch")[1], index.search(query, top_k, "faiss")[1])
            line += f"  {1000 * faiss_seconds / queries:>14.3f}  {torch_seconds / faiss_seconds:>11.2f}  {same}"
        else:
            line += f"  {'(no faiss)':>14}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="test_resnet", help="timm backbone of the embedding benchmark")
    parser.add_argument("--min-size", type=int, default=256)
    parser.add_argument("--max-size", type=int, default=448)
    parser.add_argument("--images", type=int, default=16, help="gallery scenes embedded")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="gallery boxes")
    parser.add_argument("--dim", type=int, default=256, help="embedding dimension (NAE: 256)")
    parser.add_argument("--queries", type=int, default=16, help="queries per timed search (batched)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-embedding", action="store_true")
    args = parser.parse_args()
    if not args.skip_embedding:
        bench_embedding(args)
    bench_search(args)


if __name__ == "__main__":
    main()
