"""PyVision environments inside other RL frameworks: one module per framework, each an optional extra.

* :mod:`pyvision_env.integrations.trl` — TRL's ``GRPOTrainer`` (``pip install 'pyvision-rl[trl]'``);
* :mod:`pyvision_env.integrations.verl` — a verl agent loop (``[verl]``);
* :mod:`pyvision_env.integrations.verifiers` — a verifiers environment, ``vf-eval pyvision-verifiers``
  (``[verifiers]``);
* :mod:`pyvision_env.integrations.skyrl` — SkyRL-Gym (``[skyrl]``);
* :mod:`pyvision_env.integrations.rllib` — environments RLlib's env runners make by name (``[rllib]``).

Each adapter is thin: it plays :class:`~pyvision_env.env.PyVisionEnv` episodes (with the rewards of
:mod:`pyvision_env.wrappers`) in the framework's own contract and re-implements none of them. What survives in
each framework is listed in ``docs/integrations.md``.

Importing any adapter registers the installed suites (public benchmarks included) first, so that rows and configs
may name any of them; a suite source that fails is logged and the others stay.
"""

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..registry import register_installed_suites

for _problem in register_installed_suites():
    logging.getLogger(__name__).warning("%s", _problem)


def write_parquet(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write dataset rows as the Parquet file a framework's trainer reads (its folder made); returns its path."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(list(rows)).to_parquet(path)
    return path
