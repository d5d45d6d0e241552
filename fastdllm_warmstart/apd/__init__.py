"""Adaptive Parallel Decoding (APD, arXiv 2506.00413) as a decoding mode of this engine.

:mod:`.decoding` holds the commit callback and the acceptance rule; :mod:`.scorers` the aux
model's side (one vocabulary: logits; across the tokenizer bridge: the probability of the dLLM's
text); :mod:`.config` the settings. Kept light: ``fastdllm_warmstart.config`` imports :mod:`.config`.
"""
