"""Agent policies for PyVision-RL.

This package will hold the policies that act in the ``pyvision_env`` Gymnasium
environment: the model-backed agents (multimodal LLMs served locally through
``transformers`` or ``vllm``) that read the image and task, write Python code to
crop/zoom/analyse the image, and receive the sandboxed kernel's outputs as
observations, together with the prompt formatting and action parsing they share
and simple scripted baselines used for tests and benchmarks.
"""
