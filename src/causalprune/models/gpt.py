"""`gpt`: a small decoder-only transformer written with `nn.Linear` layers.

Pre-norm blocks (LayerNorm → causal self-attention → residual; LayerNorm → GELU MLP → residual),
learned positional embeddings, a final LayerNorm and a linear head to the vocabulary. The attention's
q, k and v are separate `nn.Linear` projections (a head is rows ``h·d_head : (h+1)·d_head`` of each, and
the same columns of ``proj``); the head width ``d_head`` is fixed when the model is built and the head
count is read from the projections (``n_head = q.out_features // d_head``), so a network whose heads
were removed (``prune.granularity: channel``) reports and uses its new head count.

Channel groups (`causalprune.groups`): the model declares its heads (`channel_pruning_heads`: every
attention's ``q`` with its head count — Torch-Pruning couples q, k, v and proj's columns channel by
channel, and a head bundles ``d_head`` of those channels) and keeps the residual stream
(`channel_pruning_ignored_layers`: ``proj`` and ``down`` of every block, whose outputs are the
stream). The groups are then whole heads and the MLPs' hidden neurons. Inputs are (B, T)
token ids with T <= ``block_size``; outputs (B, T, vocab) logits.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate q, k, v projections."""

    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"model.d_model {d_model} must be a multiple of model.n_head {n_head}")
        self.d_head = d_model // n_head
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.proj = nn.Linear(d_model, d_model)

    @property
    def n_head(self) -> int:
        """The number of heads: the projections' width over the head width (fewer once heads are removed)."""
        return self.q.out_features // self.d_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the positions up to each one (B, T, d) → (B, T, d)."""
        b, t, _ = x.shape
        q, k, v = (lin(x).reshape(b, t, -1, self.d_head).transpose(1, 2) for lin in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    """The block's feed-forward part: up projection, GELU, down projection."""

    def __init__(self, d_model: int, d_mlp: int) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, d_mlp)
        self.down = nn.Linear(d_mlp, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return down(gelu(up(x)))."""
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """One pre-norm transformer block."""

    def __init__(self, d_model: int, n_head: int, d_mlp: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, d_mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add attention, then the MLP, to the residual stream."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Decoder-only transformer: (B, T) token ids → (B, T, vocab_size) next-token logits."""

    def __init__(self, vocab_size: int, block_size: int = 64, n_layer: int = 2, n_head: int = 4, d_model: int = 128,
                 d_mlp: int | None = None, tie_weights: bool = False) -> None:  # fmt: skip
        super().__init__()
        for key, value in (("vocab_size", vocab_size), ("block_size", block_size), ("n_layer", n_layer),
                           ("n_head", n_head), ("d_model", d_model)):  # fmt: skip
            if value < 1:
                raise ValueError(f"model.{key} must be >= 1, got {value}")
        d_mlp = 4 * d_model if d_mlp is None else d_mlp
        self.block_size = block_size
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(block_size, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_head, d_mlp) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(self._init)
        if tie_weights:
            self.head.weight = self.tok.weight

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def channel_pruning_heads(self) -> dict[nn.Module, int]:
        """Return every attention's q projection → its head count (a channel group is a whole head)."""
        return {block.attn.q: block.attn.n_head for block in self.blocks}

    def channel_pruning_ignored_layers(self) -> list[nn.Module]:
        """Return the layers whose outputs are the residual stream (kept whole) and the head."""
        return [m for block in self.blocks for m in (block.attn.proj, block.mlp.down)] + [self.head]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Return the (B, T, vocab_size) logits of the (B, T) token ids `idx`."""
        t = idx.shape[1]
        if t > self.block_size:
            raise ValueError(f"gpt: sequence of {t} tokens is longer than model.block_size {self.block_size}")
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))
