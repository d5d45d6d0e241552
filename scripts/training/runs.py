"""Run bookkeeping shared by the training scripts: resumable checkpoints, the learning-rate
schedule, the optimiser step, function-preserving growth of a smaller model, library versions."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict

import torch


def save_checkpoint(path, model, opt, stream: "ProblemStream", gen: torch.Generator, state: dict,
                    **extra) -> None:
    """Everything a run needs to continue on another machine (weights, optimiser, data and mask
    RNG states, the run's own ``state``), written atomically."""
    path = Path(path)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "data_rng": stream.rng.getstate(),
                "data_queue": getattr(stream, "queue", None), "gen_rng": gen.get_state(), "state": state,
                **extra}, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)


def load_checkpoint(path, model, opt, stream: "ProblemStream", gen: torch.Generator) -> dict:
    """Restore what :func:`save_checkpoint` wrote; returns the checkpoint (``["state"]``, extras)."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    stream.rng.setstate(ck["data_rng"])
    stream.queue = ck.get("data_queue")
    gen.set_state(ck["gen_rng"])
    return ck


def grow_state_dict(small: Dict[str, torch.Tensor], model) -> Dict[str, int]:
    """Load a smaller :class:`TinyLLaDAModelLM` checkpoint into a deeper and/or wider ``model`` of the
    same ``d_model`` so that ``model`` computes exactly the same function (function-preserving growth).

    The small model's layer ``i`` goes to layer ``i * L_new // L_old``; every other layer is a fresh
    block whose output projections (``attn_out``, ``down``) are zero, so its residual branch adds
    nothing until training moves it. A wider MLP keeps the old hidden units first in both SwiGLU
    halves and gives the new units zero output columns. Returns counts for the training log."""
    new = model.state_dict()
    old_layers = 1 + max(int(k.split(".")[1]) for k in small if k.startswith("blocks."))
    new_layers = len(model.blocks)
    if new_layers < old_layers:
        raise ValueError(f"cannot grow {old_layers} layers into {new_layers}: use --layers >= {old_layers}")
    placed = {i * new_layers // old_layers: i for i in range(old_layers)}
    with torch.no_grad():
        for name, t in new.items():
            if not name.startswith("blocks."):
                if small[name].shape != t.shape:
                    raise ValueError(f"{name}: {tuple(small[name].shape)} vs {tuple(t.shape)}; growth keeps "
                                     f"d_model and the vocabulary")
                t.copy_(small[name])
                continue
            _, idx, rest = name.split(".", 2)
            src_layer = placed.get(int(idx))
            if src_layer is None:  # a fresh block: zero residual branches, the rest as initialised
                if rest in ("attn_out.weight", "down.weight"):
                    t.zero_()
                continue
            src = small[f"blocks.{src_layer}.{rest}"]
            if rest == "gate_up.weight":
                h_old, h_new = src.shape[0] // 2, t.shape[0] // 2
                t[:h_old].copy_(src[:h_old])
                t[h_new:h_new + h_old].copy_(src[h_old:])
            elif rest == "down.weight":
                t.zero_()
                t[:, :src.shape[1]].copy_(src)
            else:
                t.copy_(src)
    model.load_state_dict(new)
    return {"layers_from": old_layers, "layers_to": new_layers,
            "mlp_from": small["blocks.0.down.weight"].shape[1], "mlp_to": new["blocks.0.down.weight"].shape[1]}


def cosine_lr(step: int, lr: float, warmup: int, steps: int, min_frac: float = 0.1) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from ``lr`` to ``min_frac * lr`` at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    prog = min(1.0, (step - warmup) / max(1, steps - warmup))
    return lr * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * prog)))


def versions() -> Dict[str, str]:
    """The library versions a training log records."""
    import platform

    import tokenizers
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def optimizer_step(model, opt, loss: torch.Tensor, clip: float = 1.0) -> None:
    """Backward, gradient-norm clip, step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
