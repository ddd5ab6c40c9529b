"""PyVision-RL: a Gymnasium environment for agentic vision models, and the tools to train and evaluate them.

Importing the package registers the built-in suites as ``PyVision/<Suite>-v0`` environments.

Example:
    >>> import gymnasium as gym, pyvision_env                                   # doctest: +SKIP
    >>> env = gym.make("PyVision/Zoom-v0")
"""

__version__ = "0.1.0"

from .deprecation import renamed_attributes
from .env import PyVisionEnv
from .make import make_env
from .messages import ImagePart, Message, TextPart, from_hf, from_openai, to_hf, to_openai
from .registry import list_suites, load_suite, register_suite
from .suites import register_builtin_suites
from .tasks import (
    Region,
    Task,
    TaskSet,
    TaskSource,
    generate_tasks,
    load_directory,
    load_hf_dataset,
    load_jsonl,
)
from .visual_tokens import VisualTokenRule

__all__ = [
    "ImagePart",
    "Message",
    "PyVisionEnv",
    "Region",
    "Task",
    "TaskSet",
    "TaskSource",
    "TextPart",
    "VisualTokenRule",
    "from_hf",
    "from_openai",
    "generate_tasks",
    "list_suites",
    "load_directory",
    "load_hf_dataset",
    "load_jsonl",
    "load_suite",
    "make_env",
    "register_suite",
    "to_hf",
    "to_openai",
]

__getattr__ = renamed_attributes(__name__, {"from_generator": "generate_tasks", "from_hf_dataset": "load_hf_dataset"})

register_builtin_suites()  # PyVision/Zoom-v0, PyVision/Orientation-v0, PyVision/Count-v0, PyVision/Contrast-v0
