"""Training, probing and measuring scripts of the repository (not part of the installed package).

Run them from the repository root, as ``python scripts/<name>.py ...`` or ``python -m scripts.<name> ...``.
"""
