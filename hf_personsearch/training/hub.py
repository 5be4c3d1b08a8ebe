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
    _check_repo_id(repo_id)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message)
    return str(commit.commit_url)


def _check_repo_id(repo_id) -> None:
    parts = str(repo_id).split("/")
    if not isinstance(repo_id, str) or len(parts) != 2 or not all(parts):
        raise ValueError(f"a Hub repository id must be 'org/name', got {repo_id!r}")


def check_push_possible(repo_id, token: str | None = None) -> None:
    """Raise ValueError, before the work whose result is pushed to ``repo_id`` (a training run, a conversion), for
    what would make that push fail for certain: an id that is not "org/name", offline mode (``HF_HUB_OFFLINE``), or
    no token (``HF_TOKEN`` or ``hf auth login``). No network call: rights on the repository are only known when
    pushing."""
    from huggingface_hub import constants, get_token

    _check_repo_id(repo_id)
    if constants.HF_HUB_OFFLINE:
        raise ValueError("HF_HUB_OFFLINE is set: the push could not reach the Hub")
    if (token or get_token()) is None:
        raise ValueError("no Hugging Face token (set HF_TOKEN or run `hf auth login`): the push would be refused")


def push_command(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """The command that pushes ``folder`` later, as the run would have (said when its push failed)."""
    import shlex

    command = f"hf upload {shlex.quote(repo_id)} {shlex.quote(str(folder))} . --repo-type model"
    return command + (" --private" if private else "")
