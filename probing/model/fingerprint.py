"""What weights are, without loading them: content hashes and the fingerprint that keys the activation cache.

Local weights are hashed whole (sampling parts of a file missed damage elsewhere in it): a GGUF once per
process, a folder model's files once, their digests remembered in ``digests.json`` of the per-user model
cache (:func:`models_dir`). A hub model is named by the commit of its cached revision.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from contextlib import suppress
from pathlib import Path

from probing import environment

MODELS_VARIABLE = "PROBING_MODELS"  # moves the per-user model cache (see models_dir)
DIGESTS_FILE = "digests.json"  # in models_dir(): remembered SHA-256 of a folder model's files
# Files folded into a folder model's fingerprint: weights, configs and tokenizer files.
FOLDER_SUFFIXES = {".safetensors", ".bin", ".gguf", ".pt", ".pth", ".json", ".model", ".txt", ".tiktoken"}
# A digest is remembered only for files unchanged this long: a write within the file system's
# timestamp granularity after the hash would leave size and mtime as they were.
_SETTLED_NS = 2 * 10**9
_gguf_digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> SHA-256, hashed in this process


def models_dir() -> Path:
    """The per-user model cache, shared by every activation cache on the machine: GGUFs converted
    to safetensors and the digest memo of folder models. ``$PROBING_MODELS``, else ~/.cache/probing/models."""
    return Path(environment.read(MODELS_VARIABLE) or "~/.cache/probing/models").expanduser()


def fingerprint_of(identity: str, dtype: str, device: str) -> str:
    """The cache key of weights ``identity`` run in ``dtype`` on ``device``; all GPUs of a kind share it."""
    device_kind = device.split(":")[0]
    return hashlib.sha256(f"{identity}|{dtype}|{device_kind}".encode()).hexdigest()[:24]


def sha256(path: Path) -> str:
    """SHA-256 of the whole file."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def gguf_sha256(path: Path) -> str:
    """SHA-256 of a whole GGUF file, hashed once per process (and again if its size or mtime
    changes): a remembered digest would survive damage that keeps both. ~0.1 s for 100 MB."""
    path = path.resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _gguf_digests:
        _gguf_digests[key] = sha256(path)
    return _gguf_digests[key]


def file_sha256(path: Path) -> str:
    """SHA-256 of the whole file, remembered by (resolved path, size, mtime) in :func:`models_dir`.

    A full hash reads ~2 GB/s, and remembering it makes later fingerprints of a multi-GB folder model free.
    """
    path = path.resolve()
    stat = path.stat()
    memo_file = models_dir() / DIGESTS_FILE
    digests = _read_digests(memo_file)
    remembered = digests.get(str(path))
    if (isinstance(remembered, dict) and remembered.get("size") == stat.st_size
            and remembered.get("mtime_ns") == stat.st_mtime_ns and isinstance(remembered.get("sha256"), str)):
        return remembered["sha256"]
    digest = sha256(path)
    if time.time_ns() - stat.st_mtime_ns > _SETTLED_NS:
        digests[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        _write_digests(memo_file, digests)
    return digest


def folder_digest(folder: Path) -> str:
    """Hash of a saved model's weights, configs and tokenizer files (each hashed whole)."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.suffix in FOLDER_SUFFIXES and path.is_file():
            digest.update(f"{path.name}:{file_sha256(path)}".encode())
    return digest.hexdigest()[:24]


def hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a hub revision points to in the local cache, if it is cached."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - an invalid id simply has no cached commit
        return None
    if isinstance(found, str):
        return Path(found).parent.name
    return None


def _read_digests(memo_file: Path) -> dict:
    """The remembered digests; a missing or corrupt file is an empty memo (it is rewritten whole)."""
    try:
        digests = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        return {}
    return digests if isinstance(digests, dict) else {}


def _write_digests(memo_file: Path, digests: dict) -> None:
    """Replace the memo atomically; if the cache cannot be written, digests are simply computed again."""
    temporary = memo_file.with_name(f".{memo_file.name}.{os.getpid()}-{threading.get_ident()}")
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(digests, indent=1, sort_keys=True))
        os.replace(temporary, memo_file)
    except OSError:
        with suppress(OSError):
            temporary.unlink()
