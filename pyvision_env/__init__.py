"""PyVision-RL environments: sandboxed code execution for agentic vision models.

The execution engine lives in :mod:`pyvision_env.execution`.
"""

__version__ = "0.1.0"
