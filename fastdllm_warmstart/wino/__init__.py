"""WINO (arXiv 2507.18578): wide-in, narrow-out revocable decoding, as a decoding mode of this engine.

:mod:`.decoding` holds the shadow block and the narrow-out callback (the wide-in commit rule is
``engine.transfer.get_transfer_index_wide_in``); :mod:`.config` the settings. Kept light:
``config.py`` imports :mod:`.config` while it loads.
"""
