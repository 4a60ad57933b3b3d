"""A local Hugging Face hub cache in the real layout, for tests that load by repo id with HF_HUB_OFFLINE=1:
blobs/<sha256>, snapshots/<commit>/<path> linking to them, refs/<name> holding the commit (what huggingface_hub
leaves behind after a download; scan_cache_dir reads it back)."""
import hashlib
import os
from pathlib import Path


def add_snapshot(hub_cache: Path, repo_id: str, files: dict[str, bytes], commit: str, refs=("main",),
                 repo_type: str = "model") -> Path:
    """Writes one commit of `repo_id` (files: path in the repo -> content) and points `refs` at it. -> the
    snapshot folder."""
    repo = Path(hub_cache) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for name, content in files.items():
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file of a saved model folder (save_pretrained's output), by its path inside the folder."""
    folder = Path(folder)
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}
