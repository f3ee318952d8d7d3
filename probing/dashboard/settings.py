"""What the dashboard starts with: folders, the default model and statement set, the app's options.

Nothing here imports streamlit (and nothing heavy: torch is imported only where the
default model depends on a GPU).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from probing import environment
from probing.study.config import StudyConfig
from probing.study.folder import RESULTS_ROOT, is_results_folder
from probing.constants import EMBEDDED, GEMMA
from probing.data.statements import SAPLMA_SUFFIX, DatasetError

EXAMPLES = (
    "The city of Paris is located in France.",
    "The city of Paris is located in Japan.",
    "The chemical symbol for gold is Au.",
    "The chemical symbol for gold is Fe.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The capital of Australia is Vienna.",
)
MODEL_CHOICES = {
    "Embedded SmolLM2-135M (CPU)": EMBEDDED,
    "Gemma-3-270M (CPU; `make models` installs it)": GEMMA,
    "Llama-2-7B": "llama-2-7b",
    "Llama-2-13B": "llama-2-13b",
    "Other: hub id, folder or .gguf": "",
}


# ----------------------------------------------------------------------------- settings


def default_cache_dir() -> Path:
    """The study's default activation cache (``$PROBING_CACHE`` or ``./cache``; models: ``probing.model.loading.models_dir``)."""
    return Path(StudyConfig().cache)


def data_roots(app_root: Path, extra: Sequence[str | Path] = ()) -> list[Path]:
    """Folders the dashboard may read statement sets from, resolved, those that exist.

    The project's ``data/``, the shared datasets beside the project (``../shared/datasets``),
    ``$PROBING_DATA_ROOTS`` (separated by ``os.pathsep``) and ``extra`` (the app's ``--data-root``).
    A browser user types paths on the server: anything else on it stays out of reach.
    """
    candidates = [app_root / "data", app_root.parent / "shared" / "datasets", *extra]
    candidates += [Path(p) for p in (environment.read("PROBING_DATA_ROOTS") or "").split(os.pathsep) if p.strip()]
    roots = [Path(c).expanduser().resolve() for c in candidates]
    return list(dict.fromkeys(root for root in roots if root.is_dir()))


def path_under_roots(path: str | Path, roots: Sequence[Path], what: str = "statement sets") -> Path:
    """``path`` resolved (links followed), if it lies inside one of ``roots``; else a DatasetError
    saying which folders the dashboard reads ``what`` from and how to allow another."""
    resolved = Path(path).expanduser().resolve()
    if any(resolved.is_relative_to(root) for root in roots):
        if outside := _leads_outside(resolved, roots):
            raise DatasetError(
                f"{outside} inside {path} is a link to {outside.resolve()}, outside the folders this dashboard "
                f"reads {what} from; it is not read. Replace the link by a copy of the file, or remove it.")
        return resolved
    allowed = ", ".join(map(str, roots)) or "none (no data/ folder and no ../shared/datasets)"
    option = "--data-root DIR` or PROBING_DATA_ROOTS=DIR" if what == "statement sets" else "--results DIR`"
    raise DatasetError(
        f"{path} is outside the folders this dashboard reads {what} from ({allowed}). "
        f"Put it in one of them, or allow another folder when starting the app: `streamlit run app.py -- {option}."
    )


def _leads_outside(folder: Path, roots: Sequence[Path]) -> Path | None:
    """The first file or folder below ``folder`` whose links lead outside every root, or None."""
    if not folder.is_dir():
        return None
    for parent, folders, files in os.walk(folder):
        for name in [*folders, *files]:
            entry = Path(parent) / name
            if not any(entry.resolve().is_relative_to(root) for root in roots):
                return entry
    return None


def statement_sets_under(roots: Sequence[Path], depth: int = 2) -> list[Path]:
    """Folders of ``<topic>_true_false.csv`` files and single CSV files found in ``roots`` (sorted)."""
    found: set[Path] = set()
    for root in roots:
        if any(root.glob(f"*{SAPLMA_SUFFIX}")):
            found.add(root)
        for level in range(depth + 1):
            for path in root.glob("/".join(["*"] * (level + 1))):
                if path.is_dir() and any(path.glob(f"*{SAPLMA_SUFFIX}")):
                    found.add(path)
                elif path.suffix == ".csv" and not path.name.endswith(SAPLMA_SUFFIX):
                    found.add(path)
    return sorted(found)


def app_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The app's own options, given after ``--``: ``streamlit run app.py -- --data-root DIR --results DIR``."""
    parser = argparse.ArgumentParser(prog="streamlit run app.py --", add_help=False)
    parser.add_argument("--data-root", action="append", default=[],
                        help="a folder the sidebar may read statement sets from (repeatable)")
    parser.add_argument("--results", default=None,
                        help="a results folder to open at start, or a folder of them to list (default results/)")
    known, _ = parser.parse_known_args(list(argv))
    return known


def results_location(given: str | None) -> tuple[Path, Path | None]:
    """(folder the sidebar lists results folders from and saves new ones into, results folder to open at start or None).

    ``given`` is the app's ``--results``, else ``$PROBING_RESULTS``. A results folder (it has
    ``config.json``) is opened at start while new results still go to ``results/``: never beside
    a folder that was copied anywhere. Any other folder is where results are listed and saved.
    """
    default = Path(RESULTS_ROOT).resolve()
    given = given or environment.read("PROBING_RESULTS")
    if not given:
        return default, None
    location = Path(given).expanduser().resolve()
    if is_results_folder(location):
        return default, location
    return location, None


def example_on_start() -> bool:
    """Whether a session that has no results folder yet opens the example study (of the embedded model): not
    when another default model is set, nor with ``PROBING_EXAMPLE=0``."""
    return environment.read("PROBING_EXAMPLE") != "0" and default_model_name() == EMBEDDED


def fits_in_memory(gigabytes: float | None) -> bool | None:
    """Whether a model of ``gigabytes`` fits in this machine's free memory (the GPU's when there is
    one); None when its size is not known."""
    if not gigabytes:
        return None
    import torch

    if torch.cuda.is_available():
        free = torch.cuda.mem_get_info()[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return gigabytes * 2**30 < 0.9 * free


def llama_7b_available() -> bool:
    """Llama-2-7B's config is in the local Hugging Face cache (no network is touched)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        from probing.model.sources import PRESETS

        return isinstance(try_to_load_from_cache(PRESETS["llama-2-7b"], "config.json"), str)
    except Exception:  # noqa: BLE001
        return False


def default_model_name() -> str:
    """``$PROBING_MODEL``, else Llama-2-7B on a CUDA machine that has it locally, else the embedded model."""
    if environment.read("PROBING_MODEL"):
        return StudyConfig().model
    import torch

    if torch.cuda.is_available() and llama_7b_available():
        return "llama-2-7b"
    return EMBEDDED


def model_choices(default: str) -> list[str]:
    """Sidebar labels, the default model first."""
    labels = list(MODEL_CHOICES)
    first = next((label for label, name in MODEL_CHOICES.items() if name == default), None)
    if first:
        labels.remove(first)
        labels.insert(0, first)
    return labels


def default_per_topic() -> int | None:
    """Built-in statements per topic the sidebar starts with (small on CPU; ``$PROBING_PER_TOPIC``)."""
    if text := environment.read("PROBING_PER_TOPIC"):
        return int(text) or None
    import torch

    return None if torch.cuda.is_available() else 100


def layer_options(n_hidden_states: int) -> list[int]:
    """Layers counted from the end, -1 (after the final norm) to -n (the embeddings)."""
    return list(range(-1, -n_hidden_states - 1, -1))


def study_layers(n_hidden_states: int) -> list[int]:
    """The study's layers (the grid's defaults, -17 ... -1) that this model has, deepest first."""
    return sorted(layer for layer in StudyConfig().layers if -layer <= n_hidden_states)
