"""A scripted mask predictor with known beliefs, for testing acceptance rules exactly.

``ScriptedLM(target, p0, decay)`` knows the right answer ``target`` (B, G) of each row. At a masked
generation column ``c`` it gives the target token probability ``p0 * decay ** k``, where ``k`` is
the number of still-masked generation columns before ``c`` in its input (the uncertainty that
earlier, unresolved choices leave), the rest spread over six distractor tokens; every other token
gets (almost) nothing. So with ``p0 < threshold`` cold decoding commits one token per forward, the
model's marginals shrink along the block exactly as a real dLLM's do behind open choices, and the
conditional of a target token given the target before it is always ``p0``.

With ``shift=True`` it is a Dream-protocol model: the logit at input column ``c`` holds the
beliefs about column ``c + 1`` (counting the masked generation columns up to ``c``), so an engine
that reads the logits at the wrong column decodes the wrong tokens.

It speaks the engine's model protocol in every cache mode: ``input_ids`` or ``inputs_embeds``
(the embedding table is the identity, so an embedding's argmax is its token), ``past_key_values``
(one dummy layer whose length is the cached length), ``replace_position`` (dual cache).
"""

from typing import Optional

import torch

DISTRACTORS = (4, 5, 6, 7, 8, 9)  # the rest of the mass, spread: never as likely as the frontier


class _Config:
    def __init__(self, mask_id, eos_id, pad_id, vocab):
        self.mask_token_id, self.eos_token_id, self.pad_token_id, self.vocab_size = mask_id, eos_id, pad_id, vocab


class _Out:
    def __init__(self, logits, past):
        self.logits, self.past_key_values = logits, past


class ScriptedLM(torch.nn.Module):
    supports_padding = False

    def __init__(self, target: torch.Tensor, prompt_width: int, p0: float = 0.6, decay: float = 0.5,
                 vocab: int = 40, mask_id: int = 2, eos_id: int = 3, pad_id: int = 0, shift: bool = False):
        super().__init__()
        self.target = target.long()  # (B, G)
        self.P, self.p0, self.decay, self.V = prompt_width, p0, decay, vocab
        self.config = _Config(mask_id, eos_id, pad_id, vocab)
        self.emb = torch.nn.Embedding(vocab, vocab)
        with torch.no_grad():
            self.emb.weight.copy_(torch.eye(vocab))
        self.rows: Optional[torch.Tensor] = None  # which target rows the batch holds (default all)
        self.shift = shift          # its beliefs: column c speaks about c + 1
        self.logit_shift = shift    # what it tells the engine (protocol_for)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, past_key_values=None,
                use_cache=False, replace_position=None, **_):
        ids = input_ids if input_ids is not None else inputs_embeds.argmax(-1)  # (B, T)
        B, T = ids.shape
        if replace_position is not None:
            cols = replace_position[0].nonzero(as_tuple=True)[0]
        else:
            start = past_key_values[0][0].shape[2] if past_key_values else 0
            cols = torch.arange(start, start + T)
        mask_id = self.config.mask_token_id
        g = cols - self.P  # generation columns (negative: prompt)
        in_gen = (g >= 0) & (g < self.target.shape[1])
        masked = (ids == mask_id) & in_gen.view(1, -1)
        before = masked.long().cumsum(1) - masked.long()  # masked generation columns before c
        if self.shift:  # column c speaks about c + 1: the masks up to and including c
            g, before = g + 1, masked.long().cumsum(1)
        p = (self.p0 * self.decay ** before.double())  # (B, T)
        probs = torch.full((B, T, self.V), 1e-6, dtype=torch.float64)
        tgt = self.target[:B, g.clamp(0, self.target.shape[1] - 1)]  # (B, T)
        probs.scatter_(-1, tgt.unsqueeze(-1), p.unsqueeze(-1))
        for d in DISTRACTORS:
            probs[..., d] += (1 - p) / len(DISTRACTORS)
        probs[..., mask_id] = 1e-9
        logits = probs.log().float()
        past = None
        if use_cache:
            S = int(cols.max()) + 1 if replace_position is None else replace_position.shape[1]
            past = [(torch.zeros(B, 1, S, 1), torch.zeros(B, 1, S, 1))]
        return _Out(logits, past)

    def parameters(self, recurse: bool = True):
        return self.emb.parameters(recurse)


# The scripted-decoding problem the rule tests share (tests/test_priors.py, tests/test_dream.py):
# B rows, a P-token prompt, a G-token canvas in blocks of BLOCK.
B, P, G, BLOCK = 3, 5, 16, 8


def scripted_problem():
    """(target (B, G), prompt (B, P)): random ids away from the special ones, seed 0."""
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(10, 40, (B, G), generator=gen)
    prompt = torch.randint(10, 40, (B, P), generator=gen)
    return target, prompt


def verifier_rules():
    """The draft-verification rules with the settings the rule tests use, by name."""
    from fastdllm_warmstart.priors.accept import ThresholdAccept
    from fastdllm_warmstart.priors.chain import ChainAccept
    from fastdllm_warmstart.priors.prefix import AgreeingPrefix

    return {"accept": lambda d: ThresholdAccept(d, tau_accept=0.3),
            "chain": lambda d: ChainAccept(d),
            "prefix": lambda d: AgreeingPrefix(d)}
