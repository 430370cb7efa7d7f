"""Command-line experiments that reproduce the seed papers (``python -m core.experiments.<name>``).

- ``seed_snip``: seed 000's Table 1, SNIP vs attention-aware SNIP at 90% sparsity.
"""
