"""Synthetic evaluation tasks shipped with the plugin (``tinygsm``)."""
