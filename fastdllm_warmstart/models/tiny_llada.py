"""A small LLaDA-style bidirectional masked-diffusion transformer.

It implements the same forward protocol as Fast-dLLM's ``LLaDAModelLM`` so that the decoding
engine treats both alike:

    forward(input_ids=None, inputs_embeds=None, attention_mask=None, past_key_values=None,
            use_cache=False, replace_position=None) -> CausalLMOutputWithPast(logits, past_key_values)

KV-cache semantics (the ones the prefix and dual cache strategies rely on):

* ``past_key_values`` is a list with one ``(key, value)`` pair per layer, each ``(B, H, Lp, Dh)``;
  keys are stored *after* the rotary embedding, at their absolute positions.
* Without ``replace_position`` the new tokens are appended after the ``Lp`` cached ones (prefix
  cache): queries sit at positions ``Lp .. Lp+T-1``.
* With ``replace_position`` (bool, ``(B, L)`` or ``(1, L)``, ``T`` columns set in every row; the
  rows may select different columns, as when the rows of a continuous batch sit in different
  blocks) the new keys/values *replace* the cached ones at each row's columns (dual cache) and the
  queries sit at those columns. The returned cache holds the replaced tensors; the input cache is
  not modified. ``past_rows`` (``(B,)`` long) says which rows of a larger cache the ``B`` inputs
  are (a continuous batch's cached call): they are taken inside the forward, one copy per layer
  instead of a gathered cache and then a replaced copy of it.

Positions come from ``attention_mask`` when one is given (``cumsum(mask) - 1``), so a left-padded
row sees exactly the positions it would see alone; padded keys are never attended to.

Transient queries (``n_transient``; draft verification in ``fastdllm_warmstart.priors.spec``): the
last ``n_transient`` inputs are extra tokens whose keys/values take part in this forward only
(after the canvas keys, never in the returned cache), at the positions ``position_ids``
(``(B, n_transient)``); ``attention_bias`` (bool ``(B or 1, 1, T, S + n_transient)`` over the ``S``
canvas keys then the transient ones, True = may attend) says which keys each query sees, combined
with the padding mask. Models that implement this set ``supports_transient_queries = True``.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

KV = Tuple[torch.Tensor, torch.Tensor]


class TinyLLaDAConfig(PretrainedConfig):
    model_type = "tiny_llada"

    def __init__(
        self,
        vocab_size: int = 256,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        mlp_ratio: float = 4.0,
        rope_theta: float = 10000.0,
        max_sequence_length: int = 1024,
        init_std: float = 0.02,
        mask_token_id: Optional[int] = None,
        **kwargs,
    ):
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}).")
        if (d_model // n_heads) % 2 != 0:
            raise ValueError("d_model // n_heads must be even for rotary embeddings.")
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.mlp_ratio = mlp_ratio
        self.rope_theta = rope_theta
        self.max_sequence_length = max_sequence_length
        self.init_std = init_std
        self.mask_token_id = mask_token_id
        kwargs.setdefault("use_cache", False)
        # wte and lm_head are separate weights; transformers 4.x ties them unless told not to.
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    # Names transformers utilities look for.
    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layers

    @property
    def num_attention_heads(self) -> int:
        return self.n_heads


def positions_from_mask(attention_mask: Optional[torch.Tensor], batch: int, length: int,
                        device: torch.device) -> torch.Tensor:
    """Absolute positions (B, L): ``cumsum(mask) - 1`` (pads clamped to 0), else ``arange``."""
    if attention_mask is None:
        return torch.arange(length, device=device).unsqueeze(0).expand(batch, length)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding. The frequencies are computed in ``forward`` rather than held
    in a buffer: ``from_pretrained`` (transformers 5) materialises non-persistent buffers
    without running ``__init__``, which left a buffer holding garbage after every load."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
        return 1.0 / (self.theta ** exponents)  # (Dh/2,)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # x: (B, H, T, Dh), positions: (B, T)
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq(x.device)  # (B, T, Dh/2)
        cos = freqs.cos()[:, None].to(x.dtype)  # (B, 1, T, Dh/2)
        sin = freqs.sin()[:, None].to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return out.flatten(-2)


class Block(nn.Module):
    def __init__(self, config: TinyLLaDAConfig):
        super().__init__()
        d = config.d_model
        hidden = int(config.mlp_ratio * d)
        self.n_heads = config.n_heads
        self.head_dim = d // config.n_heads
        self.attn_norm = nn.RMSNorm(d, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.mlp_norm = nn.RMSNorm(d, eps=1e-6)
        self.gate_up = nn.Linear(d, 2 * hidden, bias=False)  # SwiGLU
        self.down = nn.Linear(hidden, d, bias=False)
        self.rotary = RotaryEmbedding(self.head_dim, config.rope_theta)

    def forward(self, x: torch.Tensor, q_pos: torch.Tensor, key_mask: Optional[torch.Tensor],
                layer_past: Optional[KV], replace_cols: Optional[torch.Tensor],
                n_transient: int = 0) -> Tuple[torch.Tensor, KV]:
        (x,), (kv,) = self.forward_parts([x], [(q_pos, key_mask, layer_past, replace_cols, n_transient)])
        return x, kv

    def forward_parts(self, xs: Sequence[torch.Tensor], metas: Sequence[tuple]) -> Tuple[list, list]:
        """Several forwards' inputs ``xs`` ((B_i, T_i, C) each, with ``metas`` (q_pos, key_mask,
        layer_past, replace_cols, n_transient) each) through the layer at once: the projections and
        the MLP run on all their tokens together, attention per part."""
        C = xs[0].shape[-1]
        sizes = [x.shape[0] * x.shape[1] for x in xs]
        flat = torch.cat([x.reshape(-1, C) for x in xs]) if len(xs) > 1 else xs[0].reshape(-1, C)  # (N, C)
        qkv = self.qkv(self.attn_norm(flat))  # (N, 3C)
        outs, kvs = [], []
        for part, x, meta in zip(qkv.split(sizes), xs, metas):
            att, kv = self._attend(part.view(x.shape[0], x.shape[1], 3 * C), *meta)
            outs.append(att)
            kvs.append(kv)
        flat = flat + self.attn_out(torch.cat(outs) if len(outs) > 1 else outs[0])
        gate, up = self.gate_up(self.mlp_norm(flat)).chunk(2, dim=-1)
        flat = flat + self.down(F.silu(gate) * up)
        return [p.view(x.shape) for p, x in zip(flat.split(sizes), xs)], kvs

    def _attend(self, qkv: torch.Tensor, q_pos: torch.Tensor, key_mask: Optional[torch.Tensor],
                layer_past: Optional[KV], replace_cols: Optional[torch.Tensor],
                n_transient: int = 0, past_rows: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, KV]:
        """Attention of one part: ``qkv`` (B, T, 3C) -> ((B * T, C), the part's keys/values)."""
        B, T, C3 = qkv.shape
        C = C3 // 3
        q, k, v = qkv.split(C, dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = k.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        q = self.rotary(q, q_pos)
        k = self.rotary(k, q_pos)
        n = T - n_transient  # canvas inputs; the last n_transient inputs are transient
        if layer_past is None:
            cached_k, cached_v = k[:, :, :n], v[:, :, :n]
        elif replace_cols is None:  # prefix cache: new canvas columns follow the cached ones
            cached_k = torch.cat((layer_past[0], k[:, :, :n]), dim=2)
            cached_v = torch.cat((layer_past[1], v[:, :, :n]), dim=2)
        else:  # dual cache: the inputs replace their row's columns, replace_cols (B, n)
            index = replace_cols[:, None, :, None].expand(B, self.n_heads, n, self.head_dim)
            if past_rows is None:
                cached_k = layer_past[0].scatter(2, index, k[:, :, :n])
                cached_v = layer_past[1].scatter(2, index, v[:, :, :n])
            else:  # the rows' copies, replaced in place
                cached_k = layer_past[0].index_select(0, past_rows).scatter_(2, index, k[:, :, :n])
                cached_v = layer_past[1].index_select(0, past_rows).scatter_(2, index, v[:, :, :n])
        if n_transient:  # transient keys join this forward only, after the canvas keys
            k = torch.cat((cached_k, k[:, :, n:]), dim=2)
            v = torch.cat((cached_v, v[:, :, n:]), dim=2)
        else:
            k, v = cached_k, cached_v
        if key_mask is None:
            attn_mask = None
        elif key_mask.dim() == 2:
            attn_mask = key_mask[:, None, None, :]  # (B, 1, 1, S)
        else:
            attn_mask = key_mask  # (B, 1, T, S)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, T, Dh)
        return att.transpose(1, 2).reshape(B * T, C), (cached_k, cached_v)


class TinyLLaDAModelLM(PreTrainedModel):
    """Bidirectional transformer (RMSNorm, SwiGLU, RoPE) predicting every position's token."""

    config_class = TinyLLaDAConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    # Honours attention_mask (left padding is invisible); upstream LLaDAModelLM ignores it.
    supports_padding = True
    supports_transient_queries = True
    # replace_position may select different columns in each row (continuous batching's dual cache).
    supports_row_windows = True
    # forward_packed: several forwards in one pass over the weights (continuous batching).
    supports_packed_calls = True
    # past_rows: a cached forward of some rows of a larger dual cache takes them itself.
    supports_past_rows = True

    def __init__(self, config: TinyLLaDAConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=1e-6)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.RMSNorm):
            nn.init.ones_(module.weight)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        past_key_values: Optional[Sequence[KV]] = None,
        use_cache: Optional[bool] = None,
        replace_position: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        attention_bias: Optional[torch.Tensor] = None,
        n_transient: int = 0,
        past_rows: Optional[torch.Tensor] = None,
        return_dict: Optional[bool] = None,
        **unused,
    ) -> CausalLMOutputWithPast:
        return self.forward_packed([dict(
            input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
            past_key_values=past_key_values, use_cache=use_cache, replace_position=replace_position,
            position_ids=position_ids, attention_bias=attention_bias, n_transient=n_transient,
            past_rows=past_rows, **unused)])[0]

    def forward_packed(self, calls: Sequence[dict]) -> List[CausalLMOutputWithPast]:
        """Several forwards (each the keyword arguments of :meth:`forward`: another window, cache
        or row set) in one pass over the weights: the layers' projections and MLPs run on all
        their tokens together, attention per forward. Each output is the forward's own, as a
        separate call would give it (a continuous batch's full and cached forwards in one call)."""
        parts = [self._prepare(**kw) for kw in calls]
        xs = [p[0] for p in parts]
        presents: List[List[KV]] = [[] for _ in parts]
        for i, block in enumerate(self.blocks):
            metas = [(q_pos, key_mask, past[i] if past else None, replace_cols, n_tr, rows)
                     for _, q_pos, key_mask, past, replace_cols, n_tr, _, rows in parts]
            xs, kvs = block.forward_parts(xs, metas)
            for store, kv in zip(presents, kvs):
                store.append(kv)
        C = xs[0].shape[-1]
        flat = torch.cat([x.reshape(-1, C) for x in xs]) if len(xs) > 1 else xs[0].reshape(-1, C)
        logits = self.lm_head(self.norm(flat))  # (N, V)
        sizes = [x.shape[0] * x.shape[1] for x in xs]
        return [CausalLMOutputWithPast(logits=lg.view(x.shape[0], x.shape[1], -1),
                                       past_key_values=kv if p[6] else None)
                for lg, x, kv, p in zip(logits.split(sizes), xs, presents, parts)]

    def _prepare(self, input_ids=None, inputs_embeds=None, attention_mask=None, past_key_values=None,
                 use_cache=None, replace_position=None, position_ids=None, attention_bias=None,
                 n_transient=0, past_rows=None, return_dict=None, **unused) -> tuple:
        """One forward's inputs, positions and attention mask:
        (x, q_pos, key_mask, past_key_values, replace_cols, n_transient, use_cache, past_rows)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if unused:
            raise TypeError(f"Unexpected arguments to TinyLLaDAModelLM.forward: {sorted(unused)}")
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        B, T, _ = x.shape
        past_len = 0 if not past_key_values else past_key_values[0][0].shape[2]

        n_transient = int(n_transient or 0)
        if not 0 <= n_transient <= T or (n_transient and position_ids is None):
            raise ValueError(f"n_transient={n_transient} must lie in [0, {T}] and needs position_ids "
                             f"of the transient inputs.")
        n = T - n_transient  # canvas inputs
        replace_cols = None
        if replace_position is not None:
            if past_key_values is None:
                raise ValueError("replace_position needs past_key_values (dual cache).")
            rp = replace_position.bool().expand(B, -1)  # (B, L)
            counts = rp.sum(dim=1)
            if bool((counts != n).any()):
                raise ValueError(f"replace_position selects {counts.tolist()} columns per row for {n} inputs.")
            replace_cols = rp.nonzero(as_tuple=True)[1].view(B, n)  # (B, n) each row's columns, ascending
            total = past_len
        else:
            total = past_len + n

        key_mask = None
        if attention_mask is not None:
            if attention_mask.shape[-1] != total:
                raise ValueError(f"attention_mask has length {attention_mask.shape[-1]}, expected {total} "
                                 "(cached + new positions).")
            key_mask = attention_mask.bool()
            if bool(key_mask.all()):
                key_mask = None
        all_pos = positions_from_mask(attention_mask, B, total, x.device)  # (B, total)
        q_pos = (all_pos.gather(1, replace_cols) if replace_cols is not None
                 else all_pos[:, past_len:past_len + n])  # (B, n)
        if n_transient:
            q_pos = torch.cat((q_pos, position_ids.to(q_pos).expand(B, n_transient)), dim=1)
        if attention_bias is not None:
            bias = attention_bias.bool()
            S = total + n_transient
            if bias.shape[-2:] != (T, S):
                raise ValueError(f"attention_bias has shape {tuple(bias.shape)}; expected (B, 1, {T}, {S}).")
            if key_mask is not None:
                pad = torch.ones((B, S), dtype=torch.bool, device=x.device)
                pad[:, :total] = key_mask
                bias = bias & pad[:, None, None, :]
            key_mask = bias.expand(B, 1, T, S)
        elif n_transient:
            raise ValueError("transient inputs need an attention_bias saying what each query sees.")

        if past_rows is not None:
            if replace_cols is None:
                raise ValueError("past_rows selects rows of a dual cache; it needs replace_position.")
            past_rows = past_rows.to(device=x.device, dtype=torch.long).view(-1)
            if past_rows.numel() != B:
                raise ValueError(f"past_rows has {past_rows.numel()} rows for {B} inputs.")
        return x, q_pos, key_mask, past_key_values, replace_cols, n_transient, bool(use_cache), past_rows


def register_with_auto(config_class, model_class) -> None:
    """Make ``AutoConfig`` / ``AutoModel`` resolve checkpoints of ``config_class.model_type``."""
    from transformers import AutoConfig, AutoModel

    try:
        AutoConfig.register(config_class.model_type, config_class)
        AutoModel.register(config_class, model_class)
    except ValueError:  # already registered
        pass


def register_auto_classes() -> None:
    """Make ``AutoConfig`` / ``AutoModel`` resolve ``model_type: tiny_llada`` checkpoints."""
    register_with_auto(TinyLLaDAConfig, TinyLLaDAModelLM)
