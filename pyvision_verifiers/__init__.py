"""PyVision-RL's verifiers environment, under the id ``vf-eval`` looks up: ``vf-eval pyvision-verifiers
--env.taskset.suite zoom ...``. verifiers imports the package its id names and takes the taskset, env and harness
it exports; they live in :mod:`pyvision_env.integrations.verifiers`."""

from pyvision_env.integrations.verifiers import PyVisionHarness, PyVisionTaskset, PyVisionVerifiersEnv

__all__ = ["PyVisionHarness", "PyVisionTaskset", "PyVisionVerifiersEnv"]
