"""Loading causal language models, and the model as the engine holds it.

A model is named by a string (see :mod:`probing.model.sources`). Device and dtype are chosen from the
hardware unless given (:mod:`probing.model.devices`); both are part of the model's fingerprint, which
keys the activation cache. A GGUF is converted once per machine into the per-user model cache
(:mod:`probing.model.conversion`), which every activation cache shares.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch

from probing import environment
from probing.constants import EMBEDDED
from probing.model.conversion import converted_gguf
from probing.model.devices import DTYPE_VARIABLE, DTYPES, check_device, default_device, default_dtype
from probing.model.fingerprint import fingerprint_of
from probing.model.layout import Edit, block_hooks, block_of, decoder_blocks
from probing.model.sources import PRESETS, ModelLoadError, ModelSource, resolve_source


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
        forced = environment.read(DTYPE_VARIABLE)
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
        digests remembered in ``digests.json`` of :func:`~probing.model.fingerprint.models_dir`.
        """
        identity = self.source().identity(self.revision)
        return fingerprint_of(identity, self.resolved_dtype, self.resolved_device)


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

    @property
    def blocks(self) -> list[torch.nn.Module]:
        """The decoder blocks in order (see :func:`~probing.model.layout.decoder_blocks`)."""
        return decoder_blocks(self.model)

    def block_of(self, layer: int) -> int:
        """The index of the block whose output is hidden state ``layer``; a ``ValueError`` for a layer
        that is not a block's output."""
        return block_of(layer, self.n_blocks)

    def hooks(self, edits: Mapping[int, Edit]) -> AbstractContextManager[None]:
        """``with model.hooks({block: edit, ...}):`` runs each block's output through its edit, and
        removes the hooks on exit, also when the ``with`` block raises."""
        return block_hooks(self.model, edits)

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

    A GGUF file is converted once per machine into a safetensors folder of the per-user model cache
    (:func:`~probing.model.conversion.converted_gguf`), which loads in ~1 s.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = ModelSpec(spec) if isinstance(spec, str) else spec
    source = spec.source()
    device = spec.resolved_device
    dtype = DTYPES[spec.resolved_dtype]
    placement: dict[str, object] = {"device_map": "auto"} if device == "cuda" else {}
    try:
        if source.gguf_file:
            location, common = str(converted_gguf(source)), {}
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
