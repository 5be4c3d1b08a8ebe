"""Push a saved model folder to the Hugging Face Hub.

``huggingface_hub`` reads the endpoint (``HF_ENDPOINT``) and token (``HF_TOKEN`` or the login cache) from
the environment; tests point it at a local fake server (``tests/support/fake_hub.py``).
"""

from __future__ import annotations

from pathlib import Path


def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str = "Upload hybrid pre-trained person search model",
    token: str | None = None,
) -> str:
    """Create ``repo_id`` (if needed) and upload every file of ``folder`` in one commit; return the commit URL.

    Raises ValueError before any network call when the folder has no ``config.json`` (not a saved model)
    or ``repo_id`` is not of the form "org/name".
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"push_folder_to_hub: {folder} is not a saved model folder (no config.json)")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"push_folder_to_hub: hub_model_id must be 'org/name', got {repo_id!r}")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message)
    return str(commit.commit_url)
