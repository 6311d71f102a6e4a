"""The push of a saved model folder to the Hub, in one commit (`HfApi.create_commit`).

The commit holds the card, `config.json` with its `auto_map`, the modeling files for remote code, the safetensors
weights and the processor files; checkpoints and trainer state stay home. `upload_plan` is the same list, so
`--dry-run` shows exactly what the commit would hold. A folder without `README.md` gets its card rendered for the
commit (the user's folder is never written to). Every failure the user can act on (no token, no network, a repository
the token cannot write) is one `PushError` whose message says that nothing was uploaded.
"""

import dataclasses
import tempfile
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HTTPError as HubHTTPError

from hfmm.hub.cards import CardError, render_card

# files a training or conversion folder may hold that never go to the Hub
LOCAL_ONLY = ("optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin", "trainer_state.json", "rng_state")
LOCAL_ONLY_DIRS = ("checkpoint-", "runs", ".cache", ".git", "__pycache__")
NO_TOKEN = "no valid Hugging Face token: run `hf auth login` or set HF_TOKEN"


class PushError(RuntimeError):
    """The Hub refused or could not be reached; nothing was committed."""


@dataclasses.dataclass
class PushResult:
    """What `push` sent (or, in a dry run, would send): the files and, after a real push, the commit URL."""

    files: list[str]
    commit_url: str | None = None


def upload_plan(model_dir: str | Path) -> list[str]:
    """The files (relative, POSIX) a push commits from `model_dir`: everything but checkpoints and trainer state."""
    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise CardError(f"{folder}: not a saved model folder (no config.json).")
    plan = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        local_only = relative.name.startswith(LOCAL_ONLY) or any(
            part.startswith(LOCAL_ONLY_DIRS) for part in relative.parts[:-1]
        )
        if path.is_file() and not path.is_symlink() and not local_only:
            plan.append(relative.as_posix())
    return plan


def _stage(model_dir: Path, fmt: str, card_kwargs: dict, workdir: Path) -> tuple[Path, dict[str, bytes]]:
    """The folder whose files are committed (the model folder, or its native transformers export) and the files
    made for the commit (the card, when the folder has none; the user's folder is never written to)."""
    if fmt == "hfmm":
        folder = model_dir
    elif fmt == "transformers":
        from hfmm.conversion.transformers.export import export_native

        try:
            export_native(model_dir, workdir / "native")
        except ValueError as error:
            raise CardError(f"{model_dir} has no native transformers form: {error}") from error
        folder = workdir / "native"
        card_kwargs = {**card_kwargs, "native": True}
    else:
        raise ValueError(f"format must be 'hfmm' or 'transformers', got {fmt!r}.")
    made = {}
    if not (folder / "README.md").is_file():
        made["README.md"] = str(render_card(model_dir, **card_kwargs)).encode()
    return folder, made


def push(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    fmt: str = "hfmm",
    dry_run: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    **card_kwargs,
) -> PushResult:
    """
    Uploads a saved model folder to the Hub as one commit (or, with `dry_run`, only lists what it would upload).

    A folder without `README.md` gets its card rendered (`render_card(model_dir, repo_id=repo_id, **card_kwargs)`)
    so the Hub never shows a generic one. `fmt="transformers"` uploads the native transformers export instead.

    Raises:
        `PushError`: no token, no network, or a repository the token cannot write; nothing was committed.
    """
    model_dir = Path(model_dir)
    with tempfile.TemporaryDirectory(prefix="hfmm-push-") as workdir:
        folder, made = _stage(model_dir, fmt, {"repo_id": repo_id, **card_kwargs}, Path(workdir))
        files = sorted(set(upload_plan(folder)) | set(made))
        if dry_run:
            return PushResult(files)
        token = token or get_token()
        if token is None:
            raise PushError(_failure(repo_id, NO_TOKEN))
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=made[name] if name in made else str(folder / name))
            for name in files
        ]
        message = commit_message or f"Upload {model_dir.name} with hfmm"
        commit_url = _commit(HfApi(token=token), repo_id, operations, private=private, message=message)
    return PushResult(files, commit_url)


def _commit(api: HfApi, repo_id: str, operations: list[CommitOperationAdd], *, private: bool, message: str) -> str:
    """Creates the repository if needed and commits `operations`; returns the commit URL."""
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.create_commit(repo_id, operations, commit_message=message).commit_url
    # The Hub's HTTP answers and transport failures (huggingface_hub's HTTPError is its HTTP client's base
    # class) and OS-level ones (offline mode, missing token, sockets); anything else is a bug and propagates.
    except (HubHTTPError, OSError) as error:
        raise PushError(_failure(repo_id, _reason(error, repo_id))) from error


def _failure(repo_id: str, reason: str) -> str:
    return f"push to {repo_id} failed, nothing was uploaded: {reason}."


def _reason(error: Exception, repo_id: str) -> str:
    """What the user can act on, from the Hub's answer or the transport's failure."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, LocalTokenNotFoundError) or status == 401:
        reason = NO_TOKEN
    elif isinstance(error, OfflineModeIsEnabled):
        reason = "offline mode is on (HF_HUB_OFFLINE=1)"
    elif status == 403:
        reason = f"the token cannot write to {repo_id}"
    elif isinstance(error, HfHubHTTPError):
        reason = f"the Hub answered {status}: {' '.join(str(error).split())[:300]}"
    else:
        reason = f"the Hub cannot be reached ({type(error).__name__}: {' '.join(str(error).split())[:200]})"
    return reason
