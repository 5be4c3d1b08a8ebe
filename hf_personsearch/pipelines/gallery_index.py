"""A gallery embedded once and searched many times: the detected persons' re-ID embeddings, boxes and scores.

Saved as two files in a folder: ``gallery_index.safetensors`` (tensors) and ``gallery_index.json`` (image
list, the model it was made with and the settings). Loading checks both, because embeddings of another model
(or of the same model at another image size) are not comparable with a query's: the search would return
ranked nonsense without any error.

The two files are written to temporary names and renamed into place, and both carry the same random write
id (the tensors in their safetensors header): an interrupted save, or files of two saves mixed, is refused on
loading instead of pairing one gallery's persons with another's image list.

Gallery images are stored as absolute paths, so an index searched from another working folder finds them;
a gallery moved after indexing gives an error naming the missing file (:meth:`GalleryIndex.image_file`).

Search ranks by :func:`~hf_personsearch.image_processing_person_search.search_similarity` (unit query
embedding . norm-aware gallery embedding = detection score x cosine), in torch by default;
``backend="faiss"`` uses a FAISS flat inner-product index (``pip install hf-personsearch[faiss]``), exact too,
so both give the same ranking (tested). FAISS is opt-in because it is not faster everywhere: on the shared
2-core development machine (benchmarks/bench_search.py, 16 queries, d=256, two runs) torch/FAISS time ratios
were 1.0-3.0 at 10k boxes (FAISS as fast or faster) but 0.55-0.64 at 100k and 0.64-0.68 at 1M (torch faster).
An approximate FAISS index (IVF/HNSW) would be the route to larger speed-ups.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..image_processing_person_search import search_similarity

TENSORS_FILE = "gallery_index.safetensors"
METADATA_FILE = "gallery_index.json"
FORMAT_VERSION = 2
"""2: norm-aware embeddings (norm = detection score), absolute image paths, skipped files. Version 1 indexes
held unit embeddings and working-folder-relative paths; they are refused with a request to rebuild."""
BACKENDS = ("torch", "faiss")


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of every weight and buffer: tells apart two checkpoints of the same architecture, which
    the model id alone cannot (a fine-tuned folder saved over an older one keeps its path)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class GalleryIndex:
    """Persons detected in a gallery.

    Attributes:
        embeddings: float32 (N, d), norm-aware re-ID embeddings of the N detected persons (unit direction x
            detection score, as ``post_process_person_search`` returns them).
        boxes: float32 (N, 4) xyxy in the pixels of the original gallery images.
        scores: float32 (N,) detection scores.
        image_index: int64 (N,) position in ``images`` of the image each person was found in.
        images: identifiers of the gallery images (absolute file paths, or names given to in-memory images),
            all that were read, including those where no person was found.
        model_id: where the model came from (``name_or_path``).
        model_fingerprint: :func:`model_fingerprint` of the model's weights.
        settings: what else changes the embeddings: detection threshold, processor min_size / max_size,
            embedding_dim.
        skipped: gallery files that could not be read, ``{"image": path, "reason": why}``; the search ran
            without them.
        image_files: ``{path: [size in bytes, modification time in ns]}`` of the image files when they were
            read: an update of the index embeds again only the files that changed (``build_index(update=)``).
    """

    embeddings: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    image_index: torch.Tensor
    images: list[str]
    model_id: str
    model_fingerprint: str
    settings: dict = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    image_files: dict = field(default_factory=dict)
    _faiss_index: object = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        n = self.embeddings.shape[0]
        for name in ("boxes", "scores", "image_index"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"GalleryIndex: {name} has {getattr(self, name).shape[0]} rows for {n} embeddings")
        if n and (int(self.image_index.min()) < 0 or int(self.image_index.max()) >= len(self.images)):
            raise ValueError(f"GalleryIndex: image_index points outside the {len(self.images)} gallery images")

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    # ------------------------------------------------------------------ disk
    def save(self, folder: str | Path) -> Path:
        """Write the index to ``folder`` (created if needed) and return the folder."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            "embeddings": self.embeddings.float().contiguous(),
            "boxes": self.boxes.float().contiguous(),
            "scores": self.scores.float().contiguous(),
            "image_index": self.image_index.long().contiguous(),
        }
        write_id = uuid.uuid4().hex
        metadata = {
            "format_version": FORMAT_VERSION,
            "write_id": write_id,
            "model_id": self.model_id,
            "model_fingerprint": self.model_fingerprint,
            "settings": self.settings,
            "images": self.images,
            "skipped": self.skipped,
            "image_files": self.image_files,
        }
        temporary = {name: folder / f".{name}.tmp" for name in (TENSORS_FILE, METADATA_FILE)}
        save_file(tensors, str(temporary[TENSORS_FILE]), metadata={"write_id": write_id})
        temporary[METADATA_FILE].write_text(json.dumps(metadata, indent=2))
        for name, path in temporary.items():
            os.replace(path, folder / name)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> GalleryIndex:
        """Read an index written by :meth:`save`; use :meth:`check_compatible` before searching with a model."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in (TENSORS_FILE, METADATA_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} is not a gallery index: {folder / name} does not exist")
        try:
            metadata = json.loads((folder / METADATA_FILE).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{folder / METADATA_FILE}: not valid JSON ({error})") from error
        if metadata.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{folder / METADATA_FILE}: format_version {metadata.get('format_version')!r}, expected "
                f"{FORMAT_VERSION}: rebuild the index with this version (hf-personsearch index)"
            )
        written = metadata.get("write_id")
        if written is not None:  # indexes saved before the write id was added have none
            with safe_open(str(folder / TENSORS_FILE), "pt") as file:
                tensors_written = (file.metadata() or {}).get("write_id")
            if tensors_written != written:
                raise ValueError(
                    f"{folder}: {TENSORS_FILE} and {METADATA_FILE} come from different saves (write id "
                    f"{tensors_written} vs {written}; a save was interrupted?): rebuild the index (hf-personsearch index)"
                )
        tensors = load_file(str(folder / TENSORS_FILE))
        return cls(
            embeddings=tensors["embeddings"],
            boxes=tensors["boxes"],
            scores=tensors["scores"],
            image_index=tensors["image_index"],
            images=list(metadata["images"]),
            model_id=metadata["model_id"],
            model_fingerprint=metadata["model_fingerprint"],
            settings=dict(metadata["settings"]),
            skipped=list(metadata.get("skipped", [])),
            image_files=dict(metadata.get("image_files", {})),  # absent in indexes saved before updates existed
        )

    def check_compatible(self, model_id: str, fingerprint: str, settings: dict) -> None:
        """Raise if the index was made with other weights or other settings than the query will be embedded
        with. The model id may differ (a folder pushed to the Hub keeps its weights); the weights may not."""
        if fingerprint != self.model_fingerprint:
            raise ValueError(
                f"the gallery index was made with another model ({self.model_id!r}, weights {self.model_fingerprint}) "
                f"than the one searching ({model_id!r}, weights {fingerprint}): rebuild the index with this model"
            )
        different = {
            key: (self.settings.get(key), value)
            for key, value in settings.items()
            if key != "threshold" and self.settings.get(key) != value
        }
        if different:
            detail = ", ".join(f"{key}: index {old!r}, now {new!r}" for key, (old, new) in different.items())
            raise ValueError(f"the gallery index was made with other settings ({detail}): rebuild it")

    def same_files(self, other: GalleryIndex) -> list[str]:
        """The images of ``other`` that this index holds with the same file record (size and modification
        time): what an update of this index into ``other`` took from it rather than embedded again."""
        return [
            path
            for path in other.images
            if path in self.image_files and self.image_files[path] == other.image_files.get(path)
        ]

    def image_file(self, position: int) -> Path:
        """The file of gallery image ``position``; a clear error when it is gone (gallery moved or deleted)."""
        path = Path(self.images[position])
        if not path.is_file():
            raise FileNotFoundError(
                f"gallery image {path} (listed in the gallery index) does not exist: the gallery was moved or "
                "deleted after indexing; rebuild the index where the images are now (hf-personsearch index)"
            )
        return path

    # ------------------------------------------------------------------ search
    def search(
        self, query_embeddings: torch.Tensor, top_k: int = 10, backend: str = "torch"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``top_k`` most similar gallery persons of each query.

        Args:
            query_embeddings: (Q, d) or (d,) query embeddings (normalised here).
            top_k: matches per query (fewer when the gallery has fewer persons).
            backend: "torch" (exact matmul + topk) or "faiss" (exact flat inner-product index; needs faiss).

        Returns:
            similarities (Q, k) float32, descending, and indices (Q, k) int64 into the index's rows.
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        queries = torch.nn.functional.normalize(torch.as_tensor(query_embeddings, dtype=torch.float32).cpu(), dim=-1)
        if queries.dim() == 1:
            queries = queries[None]
        if queries.dim() != 2 or queries.shape[1] != self.embeddings.shape[1]:
            raise ValueError(
                f"query embeddings of shape {tuple(queries.shape)} do not match the index's dimension "
                f"{self.embeddings.shape[1]}"
            )
        k = min(top_k, len(self))
        if k == 0:
            return torch.zeros((queries.shape[0], 0)), torch.zeros((queries.shape[0], 0), dtype=torch.long)
        if backend == "torch":
            similarities = search_similarity(queries, self.embeddings)
            values, indices = similarities.topk(k, dim=1)
            return values, indices
        if not faiss_available():
            raise ImportError("backend='faiss' needs the faiss package: pip install 'hf-personsearch[faiss]'")
        if self._faiss_index is None:
            import faiss

            index = faiss.IndexFlatIP(self.embeddings.shape[1])
            index.add(self.embeddings.float().contiguous().numpy())
            self._faiss_index = index
        values, indices = self._faiss_index.search(queries.contiguous().numpy(), k)
        return torch.from_numpy(values), torch.from_numpy(indices).long()
