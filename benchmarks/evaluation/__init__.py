"""Evaluation of policies: the harness (:mod:`.harness`), the public benchmark loaders (:mod:`.public`) and the
robustness variants of the suites (:mod:`.robustness`)."""
