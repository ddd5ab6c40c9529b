"""GRPO with TRL on a PyVision suite: one sandboxed episode per rollout, the code tool, the suite's reward.

Run (a GPU node, a tool-calling VLM such as Qwen3-VL; launch with ``accelerate launch`` for several GPUs)::

    python docs/examples/trl_grpo.py --model Qwen/Qwen3-VL-2B-Instruct --suite zoom --output runs/trl-zoom

or, to see it run on a laptop, with the tiny random model built locally (it will not learn anything)::

    python docs/examples/trl_grpo.py --tiny --suite tally --max-steps 2 --output /tmp/trl-tiny

The settings default to PyVision-RL's (8 rollouts per task, at most 5 turns, the accumulative tool reward).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="a model id or folder whose chat template renders tool calls")
    model.add_argument("--tiny", action="store_true",
                       help="build the tiny random Qwen2.5-VL in OUTPUT/tiny-model (a CPU smoke run)")
    parser.add_argument("--suite", default="zoom", help="a registered suite or installed public benchmark")
    parser.add_argument("--split", default="train")
    parser.add_argument("--reward", default="accumulative", help="accumulative, codevision or none (the grade)")
    parser.add_argument("--num-generations", type=int, default=8, help="rollouts per task (the group size G)")
    parser.add_argument("--max-turns", type=int, default=5)
    parser.add_argument("--max-completion-length", type=int, default=2048, help="tokens of all turns together")
    parser.add_argument("--max-steps", type=int, default=-1, help="updates (-1: one epoch of the suite)")
    parser.add_argument("--learning-rate", type=float, default=1e-6)
    parser.add_argument("--output", required=True, help="TRL's output directory (checkpoints, logs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl import GRPOConfig, GRPOTrainer

    from pyvision_env.integrations.trl import environment_factory, pyvision_reward, training_dataset

    model, processor, tiny = args.model, None, args.tiny
    if tiny:
        from trl.chat_template_utils import qwen3_vl_chat_template

        from agents.tiny_model import load_tiny_processor, make_tiny_model

        folder = make_tiny_model(Path(args.output) / "tiny-model")
        model, processor = str(folder), load_tiny_processor(folder, chat_template=qwen3_vl_chat_template)
    config = GRPOConfig(output_dir=args.output, num_generations=args.num_generations,
                        per_device_train_batch_size=args.num_generations, max_steps=args.max_steps,
                        max_completion_length=args.max_completion_length, learning_rate=args.learning_rate,
                        use_cpu=tiny, bf16=not tiny, logging_steps=1, report_to=[],
                        save_strategy="no" if tiny else "steps")
    trainer = GRPOTrainer(
        model=model, args=config, processing_class=processor,
        train_dataset=training_dataset(args.suite, split=args.split),
        environment_factory=environment_factory(args.suite, split=args.split, max_turns=args.max_turns,
                                                reward=None if args.reward == "none" else args.reward),
        reward_funcs=pyvision_reward)
    trainer.train()


if __name__ == "__main__":
    main()
