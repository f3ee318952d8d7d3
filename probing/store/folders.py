"""Where activation stores lie in a cache folder: ``cache/activations``, and ``cache/nodes/node-K``
for the nodes of a multi-node extraction (merged into the first later)."""

from __future__ import annotations

import os
from pathlib import Path

from probing.store.format import DATABASE

STORE_FOLDER = "activations"
"""A cache folder's activation store (models live in the per-user model cache, not in a cache folder)."""
NODES_FOLDER = "nodes"
"""A cache folder's ``nodes/node-K``: the stores the nodes of a multi-node extraction write, merged later."""


def private_dir(path: str | Path) -> Path:
    """Create ``path`` readable by its owner only (activations can be as private as the statements)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def store_folder(path: str | Path) -> Path:
    """An activation-store folder (one holding cache.db) as it is, or a cache folder's ``activations/``."""
    path = Path(path)
    return path if (path / DATABASE).is_file() else path / STORE_FOLDER


def node_store(cache: str | Path, node: int) -> Path:
    """The activation store a node of a multi-node extraction writes."""
    return Path(cache) / NODES_FOLDER / f"node-{node}"


def node_stores(cache: str | Path) -> list[Path]:
    """The node folders of ``cache`` that hold an activation store, by node number."""
    found = [path for path in (Path(cache) / NODES_FOLDER).glob("node-*") if (path / DATABASE).is_file()]
    return sorted(found, key=lambda path: (len(path.name), path.name))
