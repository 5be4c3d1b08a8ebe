"""The package works from a built wheel, not only from the source tree.

Everything the package reads at run time (the model card templates, the ``evaluate`` metric module) must be
package data: a non-editable install (``pip install .``, a wheel) has no repository around it. The wheel test
builds a wheel from a copy of the sources, installs it with ``pip install --target`` and, in a subprocess whose
working directory and ``sys.path`` hold no part of the repository, renders the card of a saved tiny model and
runs the metric module.
"""

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "hf_personsearch"
SOURCES = ("pyproject.toml", "README.md", PACKAGE)
"""What a wheel is built from: the project metadata (the readme is the long description) and the package."""


def _package_files(root: Path) -> list[str]:
    """Every file of the package as a wheel path (``hf_personsearch/...``), without bytecode caches."""
    return sorted(
        path.relative_to(root).as_posix()
        for path in (root / PACKAGE).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )


def test_every_data_file_of_the_package_is_declared_package_data():
    """A non-.py file under hf_personsearch/ that no package-data pattern matches would be missing from a wheel."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = [f"{PACKAGE}/{pattern}" for pattern in setuptools["package-data"][PACKAGE]]
    data_files = [name for name in _package_files(REPO) if not name.endswith(".py")]
    assert f"{PACKAGE}/hub/model_card_templates/pretrained.md" in data_files
    undeclared = [name for name in data_files if not any(fnmatch.fnmatch(name, p) for p in patterns)]
    assert not undeclared, f"add these to [tool.setuptools.package-data] in pyproject.toml: {undeclared}"


# Run in a fresh interpreter: argv = install folder, saved model folder; only the install folder holds the package.
CHILD = """
import json
import sys
from pathlib import Path

site, folder = (Path(arg).resolve() for arg in sys.argv[1:])
holders = [entry for entry in sys.path if (Path(entry or ".") / "hf_personsearch").exists()]
assert [Path(entry).resolve() for entry in holders] == [site], f"hf_personsearch found in {holders}"

import evaluate
import numpy as np
from huggingface_hub import ModelCard
from transformers import AutoModel

import hf_personsearch
from hf_personsearch.evaluation import metric_path
from hf_personsearch.hub import model_index_metrics, refresh_model_card

card = ModelCard.load(refresh_model_card(folder, repo_id="org/prtps-tiny"))
metric = evaluate.load(metric_path())
gallery = [{"image_id": "a.jpg", "boxes": np.array([[0.0, 0, 10, 10], [20, 20, 30, 30]]),
            "person_ids": np.array([1, 2]), "camera_id": 1}]
detections = [{"boxes": np.array([[0.0, 0, 10, 10], [50, 50, 60, 60]]), "scores": np.array([0.9, 0.8]),
               "embeddings": np.eye(2, 4, dtype=np.float32)}]
detection = metric.compute(gallery=gallery, detections=detections, task="detection")
model = AutoModel.from_pretrained(folder)
print(json.dumps({
    "package": hf_personsearch.__file__,
    "metric_path": metric_path(),
    "metric_package": sys.modules["hf_personsearch.evaluation"].__file__,
    "model_module": sys.modules[type(model).__module__].__file__,
    "metrics": {"/".join(key): value for key, value in model_index_metrics(card).items()},
    "card": card.content,
    "detection": {"ap": float(detection["ap"]), "recall": float(detection["recall"])},
}))
"""


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_wheel_renders_a_model_card_and_loads_the_metric_outside_the_repository(tmp_path):
    sys.path.insert(0, str(REPO / "tests" / "pipelines"))
    try:
        from tiny_search_model import save_tiny_model
    finally:
        sys.path.remove(str(REPO / "tests" / "pipelines"))

    # Build from a copy so that no build/ or *.egg-info lands in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-index", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)])
    (wheel,) = tmp_path.glob("hf_personsearch-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = {name for name in archive.namelist() if name.startswith(f"{PACKAGE}/")}
    missing = sorted(set(_package_files(source)) - in_wheel)
    assert not missing, f"files of the package missing from the wheel: {missing}"

    site = tmp_path / "site"
    _run([*pip, "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)])

    folder = save_tiny_model(tmp_path / "prtps-tiny")
    (folder / "eval_results.json").write_text(json.dumps([{"dataset": "PRW", "mAP": 0.4708, "top1": 0.84}]))
    (folder / "training_info.json").write_text(json.dumps({"kind": "pretrained", "steps": 10}))
    user = tmp_path / "user"
    user.mkdir()
    (user / "child.py").write_text(CHILD)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env.update(PYTHONPATH=str(site), HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    result = _run([sys.executable, "child.py", str(site), str(folder)], cwd=user, env=env)
    report = json.loads(result.stdout.strip().splitlines()[-1])

    for key in ("package", "metric_path", "metric_package", "model_module"):
        assert Path(report[key]).resolve().is_relative_to(site.resolve()), (key, report[key])
    assert report["metrics"] == {"PRW/map": 47.08, "PRW/top1": 84.0}
    for text in ("# prtps-tiny", "## How to use", "## Limitations", "- **steps**: 10", "| PRW | - | 47.08 | 84.00 |"):
        assert text in report["card"], text
    # One of two persons found by the top-scored detection, then a false positive: recall 1/2, and the
    # precision-recall curve's area (precision 1 up to recall 1/2) is 1/2.
    assert report["detection"] == {"ap": pytest.approx(0.5), "recall": pytest.approx(0.5)}
