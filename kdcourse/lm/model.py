"""A minGPT-like decoder-only transformer with a KV cache, and sampling. Introduced in notebook 08.

Token + learned position embeddings, pre-LayerNorm blocks of causal multi-head self-attention
and an MLP, a final LayerNorm and a linear head giving logits of shape (B, L, V) (Radford et al.
2019, "Language models are unsupervised multitask learners"; Karpathy's minGPT). Left-padded
batches pass a validity mask: pads are never attended to and positions count real tokens
only, so a padded prompt gives the same logits as the unpadded one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import eval_mode
from .task import EOS, PAD

__all__ = ["GPT", "generate"]


class _Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x, mask, past):
        b, n, d = x.shape
        q, k, v = (t.view(b, n, self.heads, d // self.heads).transpose(1, 2)      # (B, H, L, d/H)
                   for t in self.qkv(x).split(d, dim=-1))
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)         # mask (B, 1, L, L_total)
        return self.proj(out.transpose(1, 2).reshape(b, n, d)), (k, v)


class _Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.attn, self.ln2 = nn.LayerNorm(d), _Attention(d, heads), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, mask, past):
        a, kv = self.attn(self.ln1(x), mask, past)
        x = x + a
        return x + self.mlp(self.ln2(x)), kv


class GPT(nn.Module):
    """Decoder-only transformer: tokens (B, L) -> next-token logits (B, L, vocab_size).

    ``forward(idx, valid=None, past=None)`` returns logits; ``forward_cached`` also returns the
    per-layer (keys, values) to pass back as `past` for the next tokens. `valid` (B, L_total) is
    False on left pads and covers the cached tokens plus the new ones. Sequences are capped at
    `max_len` positions (the size of the position embedding).
    """

    def __init__(self, vocab_size: int, *, d_model: int = 64, n_layers: int = 4, n_heads: int = 4,
                 max_len: int = 32, seed: int = 0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        torch.manual_seed(seed)
        self.max_len, self.vocab_size = max_len, vocab_size
        self.tok, self.pos = nn.Embedding(vocab_size, d_model), nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads) for _ in range(n_layers))
        self.ln, self.head = nn.LayerNorm(d_model), nn.Linear(d_model, vocab_size)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor, valid: torch.Tensor | None = None, past=None) -> torch.Tensor:
        return self.forward_cached(idx, valid, past)[0]

    def forward_cached(self, idx, valid=None, past=None):
        """(logits (B, L, V), new past: one (keys, values) pair (B, H, L_total, d/H) per layer)."""
        b, n = idx.shape
        start = 0 if past is None else past[0][0].shape[2]
        if start + n > self.max_len:
            raise ValueError(f"sequence of {start + n} tokens exceeds max_len={self.max_len} positions")
        mask = None
        if valid is None and past is None:
            pos = torch.arange(n, device=idx.device).expand(b, n)
        else:
            if valid is None:
                valid = torch.ones(b, start + n, dtype=torch.bool, device=idx.device)
            if valid.shape != (b, start + n):
                raise ValueError(f"valid must have shape {(b, start + n)}, got {tuple(valid.shape)}")
            pos = (valid.long().cumsum(1) - 1).clamp(min=0)[:, start:]
            i = torch.arange(start, start + n, device=idx.device)[:, None]         # query positions
            j = torch.arange(start + n, device=idx.device)[None, :]                # key positions
            mask = ((j <= i) & (valid[:, None, :] | (j == i)))[:, None]            # (B, 1, L, L_total)
        x = self.tok(idx) + self.pos(pos)
        new_past = []
        for k, block in enumerate(self.blocks):
            x, kv = block(x, mask, None if past is None else past[k])
            new_past.append(kv)
        return self.head(self.ln(x)), new_past


@torch.no_grad()
def generate(model: GPT, prompts: torch.Tensor, valid: torch.Tensor | None = None, *,
             max_new: int | None = None, temperature: float = 0.0,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample completions (B, n) of left-padded `prompts` (B, L) with a KV cache.

    temperature 0 is greedy (argmax); otherwise tokens are drawn from softmax(logits / temperature)
    with `generator`. Generation stops when every row has produced EOS or the position embedding
    is full (n <= max_len - L, so an EOS that never comes cannot crash); after its EOS a row gets PAD.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    b, n = prompts.shape
    limit = model.max_len - n if max_new is None else min(max_new, model.max_len - n)
    if limit < 1:
        raise ValueError(f"prompts of {n} tokens leave no room within max_len={model.max_len}")
    valid = torch.ones_like(prompts, dtype=torch.bool) if valid is None else valid.bool()
    with eval_mode(model):
        logits, past = model.forward_cached(prompts, valid)
        out, done = [], torch.zeros(b, dtype=torch.bool, device=prompts.device)
        for step in range(limit):
            last = logits[:, -1]
            if temperature == 0:
                tok = last.argmax(-1)
            else:
                probs = F.softmax(last.float() / temperature, dim=-1)
                tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            tok = torch.where(done, torch.full_like(tok, PAD), tok)
            out.append(tok)
            done = done | (tok == EOS)
            if done.all() or step == limit - 1:
                break
            valid = torch.cat([valid, torch.ones(b, 1, dtype=torch.bool, device=valid.device)], 1)
            logits, past = model.forward_cached(tok[:, None], valid, past)
    return torch.stack(out, 1)
