"""Experiments that reproduce the science on a laptop: :mod:`benchmarks.experiments.collapse` (interaction collapse
and its remedies, ``pyvision experiment collapse``)."""
