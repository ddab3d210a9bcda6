"""Hugging Face models at channel granularity: whole attention heads and MLP neurons (docs/integrations.md).

`causalprune.groups.channel_groups` reads two optional declarations from a model:
``channel_pruning_heads()`` (an attention projection → its head count: the layer group it
produces is cut into whole heads) and ``channel_pruning_ignored_layers()`` (layers whose
outputs are kept whole). Our own `gpt` declares them in its class; a `transformers` model
cannot, so `declare` attaches them to a model of a recognised architecture — recognised by
its modules' classes (``isinstance``), never by names:

* **BERT** (``BertSelfAttention``, ``BertSelfOutput``, ``BertOutput``): every attention's
  ``query`` → its head count; kept whole: the attention output ``dense`` and the FFN output
  ``dense`` (their outputs are the residual stream). Groups: heads (query, key, value rows and
  the attention output's columns of one head) and FFN neurons (``intermediate.dense`` row,
  ``output.dense`` column); the pooler's width stays a plain channel group.
* **LLaMA** (``LlamaAttention``, ``LlamaMLP``): every ``q_proj`` → its head count; kept whole:
  ``o_proj`` and ``down_proj``. Groups: heads (q, k, v rows, o_proj columns) and MLP neurons
  (``gate_proj`` and ``up_proj`` rows, coupled through their elementwise product, and the
  ``down_proj`` column). Grouped-query attention (fewer key/value heads) is refused: a key/value
  head serves several query heads, so no query head can be removed alone.

The declarations are computed from the model when they are read, so a copy (``deepcopy``)
answers for itself and a slimmed model reports its new head counts. Both architectures
reshape with ``-1`` heads, so a slim network runs as is; `update_head_counts` rewrites the
head-count attributes a model keeps (BERT: ``num_attention_heads``, ``all_head_size``) after
`causalprune.pruner.CausalPruner.slim`. The model's ``config`` still describes the dense model.

Not supported: GPT-2 and every model built on ``transformers.pytorch_utils.Conv1D`` (its
weight is (in, out), a layer Torch-Pruning does not trace: `refuse_untraceable` names it in
one line), and any model Torch-Pruning's tracer fails on (the channel plan names the model
class and the error). A model that returns a key/value cache (LLaMA's default
``config.use_cache``) must be called with ``use_cache=False`` to be traced (`tracing_hint`).

`transformers` is never imported here: a model can only hold its classes if the caller
imported it, so they are looked up in ``sys.modules``.
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn

_BERT = "transformers.models.bert.modeling_bert"
_LLAMA = "transformers.models.llama.modeling_llama"


def _cls(module: str, name: str) -> type | None:
    """Return `transformers`' class `name` from `module` if it is imported, else None."""
    mod = sys.modules.get(module)
    found = getattr(mod, name, None) if mod is not None else None
    return found if isinstance(found, type) else None


def _instances(model: nn.Module, module: str, name: str) -> list[nn.Module]:
    cls = _cls(module, name)
    return [] if cls is None else [m for m in model.modules() if isinstance(m, cls)]


def _conv1d_layers(model: nn.Module) -> list[str]:
    cls = _cls("transformers.pytorch_utils", "Conv1D")
    return [] if cls is None else [n for n, m in model.named_modules() if isinstance(m, cls)]


def architecture(model: nn.Module) -> str | None:
    """Return ``"bert"`` or ``"llama"`` when `model` holds that architecture's attention modules, else None."""
    if _instances(model, _BERT, "BertSelfAttention"):
        return "bert"
    if _instances(model, _LLAMA, "LlamaAttention"):
        return "llama"
    return None


def _attentions(model: nn.Module, arch: str) -> list[tuple[nn.Module, int]]:
    """Return every attention's query projection and its head width."""
    if arch == "bert":
        return [(m.query, int(m.attention_head_size)) for m in _instances(model, _BERT, "BertSelfAttention")]
    return [(m.q_proj, int(m.head_dim)) for m in _instances(model, _LLAMA, "LlamaAttention")]


def head_counts(model: nn.Module) -> list[int]:
    """Return the head count of every attention of a recognised model (module order), read from its projections."""
    arch = architecture(model)
    if arch is None:
        raise ValueError(f"{type(model).__name__} is not a recognised Hugging Face architecture (BERT, LLaMA)")
    return [q.out_features // width for q, width in _attentions(model, arch)]


class _Declarations:
    """The channel-pruning declarations of a recognised model, computed from its modules when read."""

    def __init__(self, model: nn.Module, arch: str) -> None:
        self.model, self.arch = model, arch

    def heads(self) -> dict[nn.Module, int]:
        """Return every attention's query projection → its head count."""
        return {q: q.out_features // width for q, width in _attentions(self.model, self.arch)}

    def ignored(self) -> list[nn.Module]:
        """Return the layers whose outputs are the residual stream (kept whole)."""
        if self.arch == "bert":
            outputs = _instances(self.model, _BERT, "BertSelfOutput") + _instances(self.model, _BERT, "BertOutput")
            return [m.dense for m in outputs]
        attn = [m.o_proj for m in _instances(self.model, _LLAMA, "LlamaAttention")]
        return attn + [m.down_proj for m in _instances(self.model, _LLAMA, "LlamaMLP")]


def refuse_untraceable(model: nn.Module) -> None:
    """Raise ValueError, in one line, for a model whose heads and neurons cannot be traced (GPT-2's Conv1D, GQA)."""
    conv1d = _conv1d_layers(model)
    if conv1d:
        raise ValueError(f"channel granularity cannot prune {type(model).__name__}: Torch-Pruning does not trace "
                         f"transformers' Conv1D layers ({len(conv1d)}, e.g. {conv1d[0]!r}; GPT-2's Linear with an "
                         "(in, out) weight), so its heads and MLP neurons are no channel groups; use granularity "
                         "weight")  # fmt: skip
    if architecture(model) == "llama":
        names = {m: n for n, m in model.named_modules()}
        for m in _instances(model, _LLAMA, "LlamaAttention"):
            if m.k_proj.out_features != m.q_proj.out_features:
                raise ValueError(f"channel granularity cannot prune {type(model).__name__}: {names[m]!r} has "
                                 f"grouped-query attention ({m.q_proj.out_features // m.head_dim} query heads, "
                                 f"{m.k_proj.out_features // m.head_dim} key/value heads), so no head can be "
                                 "removed alone; it needs num_key_value_heads == num_attention_heads")  # fmt: skip


def declare(model: nn.Module) -> str | None:
    """Attach the head and residual-stream declarations to a recognised Hugging Face model; return its architecture.

    A model that declares ``channel_pruning_heads`` or ``channel_pruning_ignored_layers``
    itself is left alone, and so is a model of no recognised architecture (None). A model
    that cannot be traced is refused first (`refuse_untraceable`).
    """
    refuse_untraceable(model)
    arch = architecture(model)
    if arch is None or any(hasattr(model, a) for a in ("channel_pruning_heads", "channel_pruning_ignored_layers")):
        return None
    declared = _Declarations(model, arch)
    model.channel_pruning_heads = declared.heads  # read by causalprune.groups.channel_groups
    model.channel_pruning_ignored_layers = declared.ignored
    return arch


def update_head_counts(model: nn.Module) -> None:
    """Rewrite the head-count attributes of a slimmed recognised model from its projections (others: nothing).

    BERT keeps ``num_attention_heads`` and ``all_head_size`` in every ``BertSelfAttention``;
    LLaMA's attention keeps no head count (``q_proj.out_features // head_dim`` is it).
    """
    for m in _instances(model, _BERT, "BertSelfAttention"):
        m.num_attention_heads = m.query.out_features // m.attention_head_size
        m.all_head_size = m.query.out_features


def tracing_hint(model: nn.Module) -> str:
    """Return a hint to add to a tracing failure of `model` (empty when there is none)."""
    config: Any = getattr(model, "config", None)
    if getattr(config, "use_cache", False):
        return (f"; {type(model).__name__} returns a key/value cache (config.use_cache): trace it with "
                "model.config.use_cache = False or a forward that passes use_cache=False")  # fmt: skip
    return ""


__all__ = ["architecture", "declare", "head_counts", "refuse_untraceable", "tracing_hint", "update_head_counts"]
