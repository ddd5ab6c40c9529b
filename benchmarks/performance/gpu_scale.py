"""One GRPO update of Qwen2.5-VL-3B and -7B on one GPU: peak memory, generation and update tokens/s, where the
step's time goes — with LoRA and with full fine-tuning.

The models have the published architectures of Qwen2.5-VL-3B/7B-Instruct (:data:`SIZES`) and random weights,
built here in bfloat16 (nothing is downloaded); the tokenizer and image processor are the tiny model's
(:func:`agents.tiny_model.make_tiny_model`), whose ids are a subset of the real vocabulary. Each arm is one real
update of :class:`trainers.grpo.GRPOTrainer` — Hugging Face generation, real kernels on the ``tally`` suite,
float32 master weights, gradient checkpointing, chunked log-probs — in a process of its own, so an arm that runs
out of memory is reported as such and the next starts on a free GPU. A random model earns no reward, so every
advantage is 0: the update still makes every forward and backward pass and the optimizer step, which is what is
timed.

Prepared for a lent GPU machine, where it must finish within about 10 minutes (``--budget-s``; an arm that
cannot start in the time left is reported as skipped)::

    python -m benchmarks.performance.gpu_scale --out bench-results/gpu

The machine needs the project's requirements (the script checks them first and names what is missing). State
the figures with the card they ran on. ``--tiny`` runs the same on CPU with models of the same structure and
small sizes (the test of this script).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pyvision_env.reporting import markdown_table

from .report import machine_description, save_report

NAME = "gpu_scale"

SIZES: dict[str, dict[str, Any]] = {
    "7b": {"text": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                    "max_position_embeddings": 128000, "tie_word_embeddings": False, "mrope_section": [16, 24, 24]},
           "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                      "fullatt_block_indexes": [7, 15, 23, 31]}},
    "3b": {"text": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                    "num_attention_heads": 16, "num_key_value_heads": 2, "vocab_size": 151936,
                    "max_position_embeddings": 128000, "tie_word_embeddings": True, "mrope_section": [16, 24, 24]},
           "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                      "fullatt_block_indexes": [7, 15, 23, 31]}},
}
"""Qwen2.5-VL-7B/3B-Instruct's architectures (their published ``config.json``); the rest (patch 14, merge 2,
window 112, SiLU, rope theta 1e6) is the tiny model's already."""

TINY_SIZES: dict[str, dict[str, Any]] = {
    "7b": {"text": {"hidden_size": 96, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "num_key_value_heads": 2, "vocab_size": 1024, "max_position_embeddings": 32768,
                    "tie_word_embeddings": False, "mrope_section": [4, 4, 4]},
           "vision": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                      "fullatt_block_indexes": [1]}},
    "3b": {"text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
                    "num_key_value_heads": 2, "vocab_size": 1024, "max_position_embeddings": 32768,
                    "tie_word_embeddings": True, "mrope_section": [2, 3, 3]},
           "vision": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                      "fullatt_block_indexes": [1]}},
}
"""The same structures, small, for ``--tiny`` on CPU."""

SETTINGS = {"lora": ["model.lora_rank=64", "model.lora_alpha=128", "model.freeze_vision=true"], "full": []}
"""Memory setting -> trainer settings."""

METRICS = ("memory/peak_gib", "memory/state_bytes_per_parameter", "throughput/tokens_per_s",
           "throughput/update_tokens_per_s", "time/generation", "time/environment", "time/scoring", "time/update",
           "time/weight_sync", "time/step", "episodes", "response_tokens")

TIMES = {"generation_s": "time/generation", "environment": "time/environment", "scoring": "time/scoring",
         "update_s": "time/update", "step": "time/step"}
"""Table column -> the step's time metric."""

REQUIREMENTS = ("torch", "transformers", "peft", "gymnasium", "jupyter_client", "ipykernel", "safetensors")


def model_config(size: str, tiny_config: dict[str, Any], tiny: bool = False) -> dict[str, Any]:
    """The ``config.json`` of ``size`` (``3b`` or ``7b``): the tiny model's (its token ids, processor settings)
    with the architecture of :data:`SIZES` (or :data:`TINY_SIZES`)."""
    shape = (TINY_SIZES if tiny else SIZES)[size]
    config = json.loads(json.dumps(tiny_config))
    text, vision = config["text_config"], config["vision_config"]
    for key, value in shape["text"].items():
        if key == "mrope_section":
            text["rope_parameters"]["mrope_section"] = value
        else:
            text[key] = value
    text["layer_types"] = ["full_attention"] * text["num_hidden_layers"]
    config["tie_word_embeddings"] = text["tie_word_embeddings"]
    vision.update(shape["vision"], out_hidden_size=text["hidden_size"])
    config["dtype"] = "bfloat16"
    return config


def parameter_count(config: dict[str, Any]) -> int:
    """Parameters of the model ``config`` describes (built on the meta device: no memory used)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**config))
    return sum(parameter.numel() for parameter in model.parameters())


def build_model(size: str, out: Path, device: str, tiny: bool) -> dict[str, Any]:
    """The model folder of ``size`` with random bfloat16 weights; returns its parameters and build seconds."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from agents.tiny_model import make_tiny_model

    started = time.perf_counter()
    make_tiny_model(out)
    config = model_config(size, json.loads((out / "config.json").read_text()), tiny)
    for weights in out.glob("*.safetensors"):
        weights.unlink()
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(Qwen2_5_VLConfig(**config), dtype=torch.bfloat16)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    model.save_pretrained(out)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"parameters": parameters, "build_s": time.perf_counter() - started}


def arm_settings(model_dir: Path, run_dir: Path, setting: str, tiny: bool) -> list[str]:
    """The trainer's settings for one update of ``setting`` on the model in ``model_dir``."""
    device = ["model.device=cpu", "model.dtype=float32", "model.torch_threads=1"] if tiny else \
        ["model.device=cuda", "model.dtype=bfloat16", "model.torch_threads=4"]
    return [f"output_dir={run_dir}", f"model.path={model_dir}", *device, "model.master_dtype=float32",
            "model.gradient_checkpointing=true", "steps=1", "prompts_per_round=4", "rollout.group_size=4",
            f"rollout.max_new_tokens={24 if tiny else 128}", "rollout.max_length=4096", "env.max_turns=2",
            "env.num_envs=16", "ofr.enabled=false", "eval.every=0", "checkpoint.resume=false",
            "logging.progress=false", "logging.tensorboard=false", "algorithm.mini_batch_size=16",
            "algorithm.micro_batch_size=1", "algorithm.logprob_chunk_size=1024", *SETTINGS[setting]]


def run_arm(settings: list[str], out: Path) -> None:
    """One update (in this process); writes its metrics, or the error that stopped it, to ``out``."""
    import torch

    from trainers.config import GRPOConfig, load_config
    from trainers.demo import CONFIGS
    from trainers.grpo import GRPOTrainer

    try:
        with GRPOTrainer(load_config(GRPOConfig, CONFIGS / "demo_grpo.yaml", settings)) as trainer:
            trainer.step_number = 1
            metrics = trainer.step()  # not train(): its final checkpoint would write the whole state to disk
        result = {key: metrics.get(key) for key in METRICS}
    except torch.cuda.OutOfMemoryError as error:
        result = {"error": "out of memory", "detail": str(error).splitlines()[0]}
    out.write_text(json.dumps(result))


def render_markdown(arms: list[dict[str, Any]], device: str, tiny: bool, duration: float) -> str:
    def number(value: Any, fmt: str) -> str:
        return fmt.format(value) if isinstance(value, (int, float)) and math.isfinite(value) else "—"

    rows = []
    for arm in arms:
        result = arm["result"]
        rows.append({"model": arm["model"], "setting": arm["setting"],
                     "parameters": number(arm["parameters"] / 1e6, "{:,.1f} M"), "outcome": result.get("error", "ran"),
                     "peak": number(result.get("memory/peak_gib"), "{:.1f}"),
                     "state": number(result.get("memory/state_bytes_per_parameter"), "{:.2f}"),
                     "generation": number(result.get("throughput/tokens_per_s"), "{:.0f}"),
                     "update": number(result.get("throughput/update_tokens_per_s"), "{:.0f}"),
                     **{column: number(result.get(key), "{:.1f}") for column, key in TIMES.items()}})
    columns = [("model", "model", "{}"), ("setting", "setting", "{}"), ("parameters", "parameters", "{}"),
               ("outcome", "outcome", "{}"), ("peak", "peak GiB", "{}"), ("state", "state bytes / param", "{}"),
               ("generation", "generation tok/s", "{}"), ("update", "update tok/s", "{}"),
               ("generation_s", "generation s", "{}"), ("environment", "environment s", "{}"),
               ("scoring", "scoring s", "{}"), ("update_s", "update s", "{}"), ("step", "step s", "{}")]
    models = ("small models of the published structures (--tiny), float32" if tiny else
              "random weights, the published architectures, bfloat16 compute over float32 master weights")
    notes = [f"Device: {device}. One update per arm: 4 prompts x 4 episodes, up to 2 turns, Hugging Face "
             f"generation; {models}; gradient checkpointing, log-probs in chunks of 1024; LoRA rank 64 (vision "
             f"frozen). Total {duration:.0f} s."]
    return "\n".join([markdown_table(rows, columns), "", *notes]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.performance.gpu_scale",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/gpu"))
    parser.add_argument("--models", default="3b,7b", help="comma-separated: 3b, 7b (default: %(default)s)")
    parser.add_argument("--settings", default="lora,full", help="comma-separated: lora, full (default: %(default)s)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="whole run's time (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="small models of the same structure, on CPU")
    parser.add_argument("--arm", nargs=2, metavar=("SETTINGS_JSON", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.arm:
        run_arm(json.loads(Path(args.arm[0]).read_text()), Path(args.arm[1]))
        return 0
    missing = [name for name in REQUIREMENTS if importlib.util.find_spec(name) is None]
    if missing:
        print(f"gpu_scale: missing requirements: {', '.join(missing)} (pip install -e '.[train]')", file=sys.stderr)
        return 2
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("gpu_scale: no CUDA device (use --tiny to run the small models on CPU)", file=sys.stderr)
        return 2
    device = "cpu" if args.tiny else f"cuda ({torch.cuda.get_device_name(0)})"
    models, settings = args.models.split(","), args.settings.split(",")
    for name, chosen, known in (("--models", models, SIZES), ("--settings", settings, SETTINGS)):
        if not set(chosen) <= set(known):
            parser.error(f"{name}: choose from {', '.join(known)}, got {','.join(chosen)}")
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "gpu-scale-runs"
    arms = []
    for size in models:
        left = args.budget_s - (time.perf_counter() - started)
        if left < 60:
            arms += [{"model": size, "setting": s, "parameters": float("nan"), "result": {"error": "skipped: time"}}
                     for s in settings]
            continue
        model_dir = work / f"model-{size}"
        built = build_model(size, model_dir, "cpu" if args.tiny else "cuda", args.tiny)
        print(f"gpu_scale: {size} built ({built['parameters'] / 1e9:.3f} B parameters) in {built['build_s']:.0f} s",
              file=sys.stderr, flush=True)
        for setting in settings:
            arm = {"model": size, "setting": setting, "build_s": built["build_s"], "parameters": built["parameters"]}
            left = args.budget_s - (time.perf_counter() - started)
            if left < 30:
                arms.append({**arm, "result": {"error": "skipped: time"}})
                continue
            arm_dir = work / f"{size}-{setting}"
            arm_dir.mkdir(parents=True, exist_ok=True)
            (arm_dir / "settings.json").write_text(json.dumps(arm_settings(model_dir, arm_dir / "run", setting,
                                                                           args.tiny)))
            result_file = arm_dir / "result.json"
            try:
                done = subprocess.run([sys.executable, "-m", "benchmarks.performance.gpu_scale", "--arm",
                                       str(arm_dir / "settings.json"), str(result_file)],
                                      capture_output=True, text=True, timeout=left)
                result = json.loads(result_file.read_text()) if result_file.is_file() else \
                    {"error": f"failed (exit {done.returncode})", "detail": done.stderr[-2000:]}
            except subprocess.TimeoutExpired:
                result = {"error": "stopped: time"}
            print(f"gpu_scale: {size} {setting}: {result.get('error', 'ran')}", file=sys.stderr, flush=True)
            arms.append({**arm, "result": result})
        shutil.rmtree(model_dir, ignore_errors=True)
    duration = time.perf_counter() - started
    markdown = save_report(args.out, NAME, "One GRPO update of Qwen2.5-VL-3B and -7B on one GPU",
                           render_markdown(arms, device, args.tiny, duration), args.tiny, duration, device=device,
                           machine=machine_description(), arms=arms)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
