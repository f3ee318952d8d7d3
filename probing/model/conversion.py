"""GGUF files converted once per machine into safetensors folders of the per-user model cache.

Loading a GGUF through transformers parses all its metadata in Python on every load (~20 s for the
embedded model); its converted copy, dequantised to float32, loads in ~1 s and is shared by every
activation cache. Its files' SHA-256 are recorded at conversion and checked once per process
before use, so a damaged copy is converted again, never read as the GGUF's weights. Processes converting
the same file at once take turns under a file lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from probing.housekeeping import CacheRepaired, process_alive
from probing.model.fingerprint import MODELS_VARIABLE, models_dir, sha256
from probing.model.sources import ModelLoadError, ModelSource

CONVERTED_DIGESTS = "probing-digests.json"  # in a converted GGUF's folder: SHA-256 of its files at conversion
STALE_PARTIAL_SECONDS = 3600  # a conversion folder untouched this long is abandoned, whoever owns it
# GGUF architectures whose weights and config this module converts itself, and their transformers
# model_type. Checked bit-identical (every tensor, config and tokenizer file) to what transformers'
# GGUF loader gives for the embedded SmolLM2 and Gemma-3-270M; other architectures go through it.
OWN_CONVERSIONS = {"llama": "llama", "gemma3": "gemma3_text"}
_verified_conversions: set[str] = set()  # converted folders whose files matched their record in this process


def converted_gguf(source: ModelSource) -> Path:
    """The safetensors copy of the GGUF model ``source`` in :func:`models_dir`, converted on first use.

    A copy whose files differ from their record, or that has none, is converted again (with a
    ``CacheRepaired`` warning). Processes converting the same file at once (two extracts, torchrun,
    CLI and dashboard) take turns under a file lock: the first converts, the others wait and then
    load its result.
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
            convert_gguf(Path(source.location) / source.gguf_file, partial)
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


def convert_gguf(gguf: Path, folder: Path) -> None:
    """Write ``gguf`` dequantised to float32 into ``folder`` as transformers would load it: weights,
    config, generation config and tokenizer.

    For :data:`OWN_CONVERSIONS` the file is read once, memory-mapped: the tensors are dequantised by the
    ``gguf`` package and the config is built from the metadata keys transformers maps (~9 s of CPU for
    the embedded model instead of ~19 s: transformers parses the whole metadata, vocabulary included,
    for each of config, weights and tokenizer). The tokenizer is always transformers' own (~3 s of it).
    """
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reader = GGUFReader(gguf)
    if _field(reader, "general.architecture") in OWN_CONVERSIONS and _field(reader, "general.name") != "mistral":
        model = _model_from_gguf(reader)  # a llama named "mistral" is read as Mistral by transformers
    else:
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict())
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)


def _model_from_gguf(reader) -> torch.nn.Module:
    """The float32 causal LM of a GGUF of :data:`OWN_CONVERSIONS`, built as transformers' GGUF loader
    builds it: the metadata keys it maps into the config, its per-architecture tensor processing (the
    rotary un-permutation of llama's q and k, Gemma's norms stored as ``w + 1``) and its tensor names."""
    from gguf import MODEL_ARCH_NAMES, dequantize, get_tensor_name_map
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    architecture = _field(reader, "general.architecture")
    names = [tensor.name for tensor in reader.tensors]
    settings: dict[str, object] = {"tie_word_embeddings": "output.weight" not in names}
    for key, field in reader.fields.items():
        prefix, _, rest = key.partition(".")
        renamed = GGUF_CONFIG_MAPPING.get(prefix, {}).get(rest)
        if renamed not in (None, -1):
            settings[renamed] = _field(reader, key)
    settings["model_type"] = OWN_CONVERSIONS[architecture]
    if "vocab_size" not in settings and "tokenizer.ggml.tokens" in reader.fields:
        settings["vocab_size"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    config = AutoConfig.for_model(**settings)
    with torch.device("meta"):  # no initialisation: every weight comes from the file
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    arch = next(key for key, name in MODEL_ARCH_NAMES.items() if name == architecture)
    gguf_names = get_tensor_name_map(arch, config.num_hidden_layers)
    hf_names = {}
    for hf_name in model.state_dict():
        module, _, kind = hf_name.rpartition(".")
        gguf_name = gguf_names.get_name(module)
        if gguf_name is not None:
            hf_names[f"{gguf_name}.{kind}"] = hf_name
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=settings)
    weights = {}
    for tensor in reader.tensors:
        if tensor.name in hf_names:  # others (llama 3's rope_freqs) transformers ignores as well
            values = processor.process(weights=dequantize(tensor.data, tensor.tensor_type), name=tensor.name).weights
            weights[hf_names[tensor.name]] = torch.from_numpy(np.copy(values))
    model.load_state_dict(weights, strict=False, assign=True)
    model.tie_weights()  # a tied output head is the embedding, which the file holds once
    empty = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if empty:
        raise ValueError(f"the GGUF has no tensors for {', '.join(empty)}")
    return model


def _field(reader, key: str) -> object:
    """A metadata value as transformers reads it: a scalar, a string, or a list of several."""
    if key not in reader.fields:
        return None
    from gguf import GGUFValueType

    field = reader.fields[key]
    text = field.types[-1] == GGUFValueType.STRING
    values = [bytes(field.parts[i]).decode() if text else field.parts[i].tolist()[0] for i in field.data]
    return values[0] if len(values) == 1 else values


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
    return {path.name: sha256(path) for path in sorted(folder.iterdir())
            if path.is_file() and path.name != CONVERTED_DIGESTS}


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
