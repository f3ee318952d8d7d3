"""Where a causal LM keeps its decoder blocks, and hooks on their outputs that always leave.

The package names hidden states by layer, ``hidden_states[layer]`` (negative: from the end);
``hidden_states[k]`` is the output of block ``k - 1`` and ``hidden_states[0]`` the embeddings. Hooks are
keyed by block index, as TransformerLens keys ``blocks.{i}.hook_resid_post``: :func:`block_of` turns a
layer into one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from probing.model.loading import LoadedModel

Edit = Callable[[torch.Tensor], torch.Tensor]
"""A block's output hidden states (batch, sequence, width) -> what the next block receives instead."""

# Attribute paths of the decoder blocks: Llama, Gemma, Mistral, Qwen; GPT-2; NeoX; OPT-style decoders.
BLOCK_PATHS = (("model", "layers"), ("transformer", "h"), ("gpt_neox", "layers"), ("model", "decoder", "layers"))


def decoder_blocks(network: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder blocks of a transformers causal LM in order; a clear error for an architecture
    whose blocks are not found."""
    for path in BLOCK_PATHS:
        found = network
        for name in path:
            found = getattr(found, name, None)
        if isinstance(found, torch.nn.ModuleList) and len(found) == network.config.num_hidden_layers:
            return list(found)
    raise ValueError(f"cannot find the decoder blocks of {type(network).__name__}: they are not where Llama-, "
                     "GPT-2- or NeoX-style models keep them (model.layers, transformer.h, gpt_neox.layers)")


def block_of(layer: int, n_blocks: int) -> int:
    """The block whose output is hidden state ``layer`` (negative: from the end; -1 is the last block's
    output, which the hidden states show after the final norm)."""
    n_hidden_states = n_blocks + 1
    index = layer + n_hidden_states if layer < 0 else layer
    if not 1 <= index < n_hidden_states:
        raise ValueError(f"layer {layer} is not the output of a block: this model has {n_blocks} blocks, "
                         f"so layers run from {-n_blocks} to -1 (0 and {-n_hidden_states} are the embeddings)")
    return index - 1


@contextmanager
def block_hooks(network: torch.nn.Module, edits: Mapping[int, Edit]) -> Iterator[None]:
    """Inside the ``with`` block, the output of block ``i`` goes through ``edits[i]`` (in every forward
    pass, generation steps included) before block ``i + 1`` reads it. The hooks are removed when the
    block exits, also when it raises.

    transformers records ``output_hidden_states`` before these hooks run: an edit of block ``i`` shows
    in the hidden states of the blocks after it, and in the logits, not in ``hidden_states[i + 1]``.
    """
    blocks = decoder_blocks(network)
    outside = [index for index in edits if not 0 <= index < len(blocks)]
    if outside:
        raise ValueError(f"block(s) {outside} do not exist: this model has blocks 0 to {len(blocks) - 1}")

    def hook(edit: Edit):
        def run(module, inputs, output):
            if isinstance(output, tuple):  # blocks of older transformers return (hidden, cache, ...)
                return (edit(output[0]), *output[1:])
            return edit(output)
        return run

    handles = []
    try:
        for index, edit in edits.items():
            handles.append(blocks[index].register_forward_hook(hook(edit)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def adding(model: LoadedModel, vectors: Mapping[int, torch.Tensor],
           positions: torch.Tensor | None = None) -> Iterator[None]:
    """Add ``vectors[i]`` (width) to the output of block ``i`` inside the ``with`` block, in the dtype
    and on the device of that output (blocks spread over GPUs each get their own copy).

    ``positions`` (batch, sequence, bool): where to add in a forward pass of that shape; passes of
    another length (a generated token's, with a cache) are left alone. None: every position of
    every pass.
    """
    def add(vector: torch.Tensor) -> Edit:
        def edit(hidden: torch.Tensor) -> torch.Tensor:
            added = vector.to(hidden.device, hidden.dtype)
            if positions is not None:
                if positions.shape[1] != hidden.shape[1]:
                    return hidden
                added = added * positions[:, :, None].to(hidden.device, hidden.dtype)
            return hidden + added
        return edit

    with model.hooks({index: add(vector) for index, vector in vectors.items()}):
        yield
