"""Turn a model argument (local folder or hub id) into a local model folder."""

from __future__ import annotations

from pathlib import Path

from .errors import ModelFolderError
from .manifest import MANIFEST_NAME


def resolve_model_folder(model: str | Path, revision: str | None = None) -> Path:
    """A local folder is used as is; anything else that looks like `org/name` is downloaded from the hub."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    text = str(model)
    if path.exists():
        raise ModelFolderError(f"{text} is a file, not a gte-onnx model folder")
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise ModelFolderError(f"{text} is neither a local model folder nor a hub id of the form org/name")
    try:
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(repo_id=text, revision=revision))
    except Exception as exc:  # network, auth or missing repo: say which, once
        raise ModelFolderError(f"could not download {text} from the Hugging Face hub: {exc}") from None
    if not (local / MANIFEST_NAME).is_file():
        raise ModelFolderError(
            f"{text} was downloaded but is not a gte-onnx model folder (no {MANIFEST_NAME}); "
            f"make one with: gte-onnx export {text} OUT_DIR"
        )
    return local
