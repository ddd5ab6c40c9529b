"""One GRPO update of Qwen2.5-VL-3B and -7B on one GPU, with LoRA and with full fine-tuning: peak memory,
training state per parameter, generation and update tokens/s, and where the step's time goes.

The models have the published architectures of Qwen2.5-VL-3B/7B-Instruct (:data:`ARCHITECTURES`; their
parameter counts are checked against the published ones) and random weights, built here in bfloat16: nothing is
downloaded. The tokenizer, chat template and image processor are the tiny model's
(:func:`agents.tiny_model.make_tiny_model`); its 1024 ids are a subset of the real vocabulary, and the model's
config takes its special-token ids from there. Each arm is one real update of
:class:`trainers.grpo.GRPOTrainer` on the ``tally`` suite (Hugging Face generation, real kernels, float32 master
weights under bfloat16 autocast, gradient checkpointing, log-probs in chunks), in a process of its own, so an
arm that runs out of memory is reported as such and the next one starts on a free GPU. Arms:

* ``lora`` — rank 64, alpha 128, vision tower frozen, frozen weights in bfloat16;
* ``full`` — every weight trained: float32 weights, gradients and AdamW state (16 bytes per parameter; the 7B
  needs about 124 GiB for them alone and is expected to run out of memory on a 141 GB card).

A random model earns no reward, so every advantage is 0; with OFR off the trainer still trains on every episode
with sampled tokens (nothing drops zero-advantage groups), so the update makes every forward and backward pass
and the optimizer step, which is what is timed. A random model also never writes its end token: each episode is
one response of ``max_new_tokens`` tokens that ends ``over_length``. The step is :meth:`GRPOTrainer.step`, not
``train()``, whose final checkpoint would write the weights and optimizer state (about 100 GB for the 7B).

Prepared for a lent machine with one GPU (an H200), where it must finish within 10 minutes; estimated (not yet
run on a GPU) at 5 to 7 minutes, the models' weights (7.5 and 16.6 GB, written to ``--work``, a temporary folder
by default, and deleted after each model) included: their writing is timed and reported. ``--budget-s``
(default 540) bounds the whole run: an arm that cannot start in the time left is reported ``skipped: time``, one
that overruns ``--arm-timeout-s`` (default 240) or the budget ``stopped: time``, and the report is rewritten
after every arm (and when the script is stopped)::

    python -m benchmarks.performance.gpu_scale --out bench-results/gpu

It writes ``gpu_scale.md`` and ``gpu_scale.json`` into ``--out`` (and each process's log under
``gpu_scale-logs``) and prints the table. State every figure with the card it ran on (the report names it).
``--tiny`` runs the same code on CPU with small models of the same structure (the test of this script).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

NAME = "gpu_scale"

PUBLISHED_PARAMETERS = {"3b": 3_754_622_976, "7b": 8_292_166_656}
"""Parameters of Qwen2.5-VL-3B/7B-Instruct (their ``model.safetensors.index.json``; the 3B's tied embeddings
counted once)."""

VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
          "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
          "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu", "tokens_per_second": 2}

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "3b": {"text": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                    "num_attention_heads": 16, "num_key_value_heads": 2, "vocab_size": 151936,
                    "max_position_embeddings": 128000, "max_window_layers": 70, "sliding_window": 32768,
                    "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
           "rope": {"rope_theta": 1e6, "mrope_section": [16, 24, 24]}, "vision": VISION},
    "7b": {"text": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                    "max_position_embeddings": 128000, "max_window_layers": 28, "sliding_window": 32768,
                    "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
           "rope": {"rope_theta": 1e6, "mrope_section": [16, 24, 24]}, "vision": VISION},
}
"""Qwen2.5-VL-3B/7B-Instruct's published ``config.json`` (architecture fields; the vision tower's output
width is the text model's hidden size)."""

TINY_VISION = {**VISION, "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
               "fullatt_block_indexes": [1]}

TINY_ARCHITECTURES: dict[str, dict[str, Any]] = {
    size: {"text": {**shape["text"], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2},
           "rope": {**shape["rope"], "mrope_section": [2, 3, 3]}, "vision": TINY_VISION}
    for size, shape in ARCHITECTURES.items()
}
"""The same structures, narrow and shallow (the real vocabularies kept, so that the model samples ids the tiny
tokenizer does not have, as on the GPU), for ``--tiny`` on CPU."""

SETTINGS = {"lora": ["model.lora_rank=64", "model.lora_alpha=128", "model.freeze_vision=true"],
            "full": []}
"""Memory setting -> trainer settings."""

METRICS = ("memory/peak_gib", "memory/state_bytes_per_parameter", "throughput/tokens_per_s",
           "throughput/update_tokens_per_s", "time/generation", "time/environment", "time/scoring", "time/update",
           "time/weight_sync", "time/step", "episodes", "trained_trajectories", "turns", "response_tokens",
           "visual_tokens", "over_length", "loss")
"""The trainer's step metrics an arm keeps."""

REQUIREMENTS = ("torch", "transformers", "peft", "safetensors", "tokenizers", "yaml", "gymnasium",
                "jupyter_client", "ipykernel", "zmq", "numpy", "PIL", "psutil", "tqdm")
"""What the script and the trainer import (module names)."""

MIN_ARM_S = 45.0
"""Seconds an arm needs at least (start, model load, one update); with less left it is skipped."""


# --- the models --------------------------------------------------------------------------------------

def model_config(size: str, tiny_config: dict[str, Any], tiny: bool = False) -> dict[str, Any]:
    """The ``config.json`` of ``size`` (``3b`` or ``7b``): the tiny model's (its special-token ids) with the
    architecture of :data:`ARCHITECTURES` (or :data:`TINY_ARCHITECTURES`)."""
    shape = (TINY_ARCHITECTURES if tiny else ARCHITECTURES)[size]
    config = json.loads(json.dumps(tiny_config))
    text, vision = config["text_config"], config["vision_config"]
    text.update(shape["text"])
    text["rope_parameters"].update(shape["rope"])
    text["layer_types"] = ["full_attention"] * text["num_hidden_layers"]
    vision.update(shape["vision"], out_hidden_size=text["hidden_size"])
    config["tie_word_embeddings"] = text["tie_word_embeddings"]
    config["dtype"] = "bfloat16"
    return config


def parameter_count(config: dict[str, Any]) -> int:
    """Parameters of the model ``config`` describes (built on the meta device: no memory used)."""
    import torch
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(Qwen2_5_VLConfig(**config))
    return sum(parameter.numel() for parameter in model.parameters())


def build_model(size: str, out: Path, device: str, tiny: bool = False) -> dict[str, Any]:
    """Write the model folder of ``size`` into ``out``: random bfloat16 weights made on ``device``, the tiny
    model's tokenizer and image processor. Returns its parameter count, the seconds spent making and writing the
    weights, and their size on disk."""
    import torch
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig

    from agents.tiny_model import make_tiny_model

    make_tiny_model(out)
    config = model_config(size, json.loads((out / "config.json").read_text()), tiny)
    for weights in out.glob("*.safetensors"):
        weights.unlink()
    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(Qwen2_5_VLConfig(**config), dtype=torch.bfloat16)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    if not tiny and abs(parameters / PUBLISHED_PARAMETERS[size] - 1) > 0.02:
        raise RuntimeError(f"{size}: {parameters:,} parameters, published {PUBLISHED_PARAMETERS[size]:,}")
    made = time.perf_counter()
    model.save_pretrained(out)
    written = time.perf_counter()
    return {"parameters": parameters, "make_s": made - started, "write_s": written - made,
            "weights_gb": sum(f.stat().st_size for f in out.glob("*.safetensors")) / 1e9}


# --- one arm, in a process of its own ----------------------------------------------------------------

def arm_settings(model_dir: Path, run_dir: Path, setting: str, tiny: bool) -> list[str]:
    """The trainer's settings for one update of ``setting`` on the model in ``model_dir``."""
    device = (["model.device=cpu", "model.dtype=float32", "model.torch_threads=1", "rollout.max_new_tokens=24"]
              if tiny else
              ["model.device=cuda", "model.dtype=bfloat16", "model.torch_threads=8", "rollout.max_new_tokens=128"])
    return [f"output_dir={run_dir}", f"model.path={model_dir}", *device, "model.master_dtype=float32",
            "model.gradient_checkpointing=true", "steps=1", "prompts_per_round=4", "rollout.group_size=4",
            "rollout.max_length=4096", "env.max_turns=2", "env.num_envs=16", "ofr.enabled=false", "eval.every=0",
            "checkpoint.every=1000", "checkpoint.resume=false", "logging.progress=false",
            "logging.tensorboard=false", "algorithm.mini_batch_size=16", "algorithm.micro_batch_size=1",
            "algorithm.logprob_chunk_size=1024", *SETTINGS[setting]]


def record_episodes(collector: Any) -> list[Any]:
    """The trajectories ``collector`` plays from now on (a list that its ``collect`` fills)."""
    played: list[Any] = []
    collect = collector.collect

    def collect_and_record(*args: Any, **kwargs: Any) -> list[Any]:
        trajectories = collect(*args, **kwargs)
        played.extend(trajectories)
        return trajectories

    collector.collect = collect_and_record
    return played


def run_arm(settings: list[str]) -> dict[str, Any]:
    """One update with ``settings`` (in this process): its metrics, or what stopped it. Memory peaks are the
    trainer's start (model loading) and the update's, apart."""
    import torch

    from trainers.config import GRPOConfig, load_config
    from trainers.demo import CONFIGS
    from trainers.grpo import GRPOTrainer

    cuda = "model.device=cuda" in settings
    stage, result, played = "load", {}, []
    started = time.perf_counter()
    try:
        with GRPOTrainer(load_config(GRPOConfig, CONFIGS / "demo_grpo.yaml", settings)) as trainer:
            result["load_s"] = time.perf_counter() - started
            if cuda:
                result["memory/load_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
                torch.cuda.reset_peak_memory_stats()
            stage, played = "step", record_episodes(trainer.collector)
            trainer.step_number = 1
            metrics = trainer.step()
        result.update({key: metrics.get(key) for key in METRICS})
    except Exception as error:  # noqa: BLE001  (the arm's outcome, reported; the next arm runs anyway)
        out_of_memory = isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error)
        result.update(error="out of memory" if out_of_memory else f"failed: {type(error).__name__}", stage=stage,
                      detail=traceback.format_exc()[-3000:])
        if cuda:
            result["memory/peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result["end_reasons"] = dict(Counter(trajectory.end_reason for trajectory in played))
    if played:
        result["tokens_per_episode"] = sum(len(trajectory.ids) for trajectory in played) / len(played)
    errors = [trajectory.error for trajectory in played if trajectory.end_reason == "error"]
    if errors:
        result["episode_errors"] = errors[:3]  # the first few; end_reasons counts them
    if "error" not in result and not result.get("throughput/update_tokens_per_s"):
        result.update(error="out of memory" if any("out of memory" in e for e in errors) else "failed: no update",
                      stage="generation")
    if cuda:
        result["memory/peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    return result


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """What a child process does: build a model or run an arm."""
    if job["task"] == "build":
        import torch

        device = "cpu" if job["tiny"] else "cuda"
        result = build_model(job["size"], Path(job["dir"]), device, job["tiny"])
        if device == "cuda":
            properties = torch.cuda.get_device_properties(0)
            result["device"] = f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB"
        return result
    return run_arm(job["settings"])


def run_child(job: dict[str, Any], log: Path, timeout: float) -> dict[str, Any]:
    """Run ``job`` in a child process (its own process group, killed whole on timeout or when this process
    stops) within ``timeout`` seconds; its result, or ``{"error": ...}``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    job_file, result_file = log.with_suffix(".job.json"), log.with_suffix(".result.json")
    job_file.write_text(json.dumps(job))
    result_file.unlink(missing_ok=True)
    with log.open("w") as output:
        child = subprocess.Popen([sys.executable, "-m", "benchmarks.performance.gpu_scale", "--child",
                                  str(job_file), str(result_file)], stdout=output, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            child.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            return {"error": "stopped: time", "detail": f"over {timeout:.0f} s; log: {log}"}
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)  # the child's kernels and helpers too
            child.wait()
    if result_file.is_file():
        return json.loads(result_file.read_text())
    return {"error": f"failed (exit {child.returncode})", "detail": log.read_text()[-3000:]}


# --- the report -------------------------------------------------------------------------------------

def render_markdown(arms: list[dict[str, Any]], builds: dict[str, dict[str, Any]], device: str, tiny: bool,
                    duration: float, planned: int) -> str:
    """The table (one row per arm) and its notes."""
    from pyvision_env.reporting import markdown_table

    def number(value: Any, fmt: str) -> str:
        return fmt.format(value) if isinstance(value, (int, float)) and math.isfinite(value) else "—"

    columns = [("model", "model", "{}"), ("setting", "setting", "{}"), ("parameters", "parameters (B)", "{}"),
               ("outcome", "outcome", "{}"), ("peak", "peak GiB", "{}"), ("reserved", "reserved GiB", "{}"),
               ("state", "state B/param", "{}"), ("generation", "generation tok/s", "{}"),
               ("update", "update tok/s", "{}"), ("length", "tokens/episode", "{}"), ("load_s", "load s", "{}"),
               *((key, f"{key.split('/')[1].replace('_', ' ')} s", "{}") for key in
                 ("time/generation", "time/environment", "time/scoring", "time/update", "time/weight_sync",
                  "time/step"))]
    rows = []
    for arm in arms:
        result = arm["result"]
        failed = result.get("end_reasons", {}).get("error", 0)
        rows.append({"model": arm["model"], "setting": arm["setting"],
                     "parameters": number((arm["parameters"] or math.nan) / 1e9, "{:.3f}"),
                     "outcome": result.get("error", f"ran ({failed} episodes failed)" if failed else "ran"),
                     "peak": number(result.get("memory/peak_gib"), "{:.1f}"),
                     "reserved": number(result.get("memory/peak_reserved_gib"), "{:.1f}"),
                     "state": number(result.get("memory/state_bytes_per_parameter"), "{:.2f}"),
                     "generation": number(result.get("throughput/tokens_per_s"), "{:.0f}"),
                     "update": number(result.get("throughput/update_tokens_per_s"), "{:.0f}"),
                     "length": number(result.get("tokens_per_episode"), "{:.0f}"),
                     "load_s": number(result.get("load_s"), "{:.1f}"),
                     **{key: number(result.get(key), "{:.2f}") for key in
                        ("time/generation", "time/environment", "time/scoring", "time/update", "time/weight_sync",
                         "time/step")}})
    models = ("small models of the published structures (--tiny), float32 on CPU" if tiny else
              "random weights, the published architectures, bfloat16 autocast over float32 master weights")
    notes = [f"Device: {device}. {len(arms)} of {planned} arms; total {duration:.0f} s.",
             f"One update per arm (GRPOTrainer.step): 4 prompts x 4 episodes on the tally suite, up to 2 turns, "
             f"Hugging Face generation; {models}; gradient checkpointing, micro-batches of 1 trajectory, log-probs "
             f"in chunks of 1024 positions. LoRA: rank 64, alpha 128, vision frozen. Full: every weight, AdamW. "
             f"The image processor is the tiny model's (at most 448 x 448 pixels, 256 visual tokens per image).",
             "Peak GiB: torch's peak allocation during the update (reserved: the allocator's peak, closer to what "
             "the card must have); the model load's own peak is in the JSON (memory/load_peak_gib). Load s: the "
             "trainer's start (model read in float32 on the host, then moved). Rewards are 0 (random weights), "
             "so every advantage is 0, but every episode with sampled tokens is trained: all forward and "
             "backward passes and the optimizer step run."]
    for size, built in builds.items():
        if "error" in built:
            notes.append(f"{size}: the model could not be built: {built['error']}.")
        else:
            notes.append(f"{size}: {built['parameters']:,} parameters; random weights made in "
                         f"{built['make_s']:.1f} s, {built['weights_gb']:.2f} GB written in {built['write_s']:.1f} s.")
    ran = [arm["result"] for arm in arms if "end_reasons" in arm["result"]]
    if ran:
        reasons = sum((Counter(result["end_reasons"]) for result in ran), Counter())
        notes.append("Episode end reasons, all arms: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
                     + " (a random model never writes its end token, so each episode is one response of "
                     "max_new_tokens that ends over_length).")
    return "\n".join([markdown_table(rows, columns), "", *notes]) + "\n"


def write_report(out: Path, arms: list[dict[str, Any]], builds: dict[str, dict[str, Any]], device: str,
                 tiny: bool, duration: float, planned: int) -> str:
    """Write ``gpu_scale.md`` and ``gpu_scale.json`` into ``out``; return the Markdown."""
    from .report import machine_description, save_report

    return save_report(out, NAME, "One GRPO update of Qwen2.5-VL-3B and -7B on one GPU",
                       render_markdown(arms, builds, device, tiny, duration, planned), tiny, duration,
                       device=device, machine=machine_description(), builds=builds, arms=arms,
                       complete=len(arms) == planned and not any("interrupted" in arm["result"].get("error", "")
                                                                 for arm in arms))


# --- the run ----------------------------------------------------------------------------------------

def measure(args: argparse.Namespace, models: list[str], settings: list[str], work: Path) -> str:
    """Build each model and run its arms within the budget, rewriting the report after each; returns the
    final Markdown."""
    started = time.perf_counter()
    deadline = started + args.budget_s
    logs = args.out / f"{NAME}-logs"
    device = "cpu (--tiny)" if args.tiny else "cuda"
    arms: list[dict[str, Any]] = []
    builds: dict[str, dict[str, Any]] = {}
    planned = len(models) * len(settings)

    def report() -> str:
        return write_report(args.out, arms, builds, device, args.tiny, time.perf_counter() - started, planned)

    try:
        for size in models:
            model_dir = work / f"model-{size}"
            builds[size] = {"error": "stopped: interrupted"}  # until the build returns
            if deadline - time.perf_counter() >= 2 * MIN_ARM_S:
                builds[size] = run_child({"task": "build", "size": size, "dir": str(model_dir), "tiny": args.tiny},
                                         logs / f"build-{size}.log", deadline - time.perf_counter() - MIN_ARM_S)
            else:
                builds[size] = {"error": "skipped: time"}
            build = builds[size]
            device = build.get("device", device)
            built = build.get("error") or f"{build['parameters']:,} parameters"
            print(f"gpu_scale: {size}: {built}", file=sys.stderr, flush=True)
            for setting in settings:
                arm = {"model": size, "setting": setting, "parameters": build.get("parameters"),
                       "result": {"error": "stopped: interrupted"}}  # until the arm returns
                arms.append(arm)
                left = deadline - time.perf_counter()
                if "error" in build:
                    arm["result"] = {"error": "skipped: time" if "time" in build["error"] else "skipped: no model"}
                elif left < MIN_ARM_S:
                    arm["result"] = {"error": "skipped: time"}
                else:
                    job = {"task": "arm", "settings": arm_settings(model_dir, work / f"run-{size}-{setting}",
                                                                   setting, args.tiny)}
                    arm["result"] = run_child(job, logs / f"{size}-{setting}.log", min(left, args.arm_timeout_s))
                print(f"gpu_scale: {size} {setting}: {arm['result'].get('error', 'ran')}", file=sys.stderr,
                      flush=True)
                report()
            shutil.rmtree(model_dir, ignore_errors=True)
    finally:
        markdown = report()  # also when stopped (SIGTERM, Ctrl-C): the arms so far
    return markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.performance.gpu_scale",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/gpu"))
    parser.add_argument("--models", default="3b,7b", help="comma-separated: 3b, 7b (default: %(default)s)")
    parser.add_argument("--settings", default="lora,full", help="comma-separated: lora, full (default: %(default)s)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="the whole run (default: %(default)s)")
    parser.add_argument("--arm-timeout-s", type=float, default=240.0, help="one arm (default: %(default)s)")
    parser.add_argument("--work", type=Path, help="where the model folders are written (default: a temporary "
                                                  "folder, removed at the end)")
    parser.add_argument("--tiny", action="store_true", help="small models of the same structures, on CPU")
    parser.add_argument("--child", nargs=2, type=Path, metavar=("JOB", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        job_file, result_file = args.child
        result_file.write_text(json.dumps(run_job(json.loads(job_file.read_text()))))
        return 0
    models, settings = args.models.split(","), args.settings.split(",")
    for option, chosen, known in (("--models", models, ARCHITECTURES), ("--settings", settings, SETTINGS)):
        if not chosen or not set(chosen) <= set(known):
            parser.error(f"{option}: choose from {', '.join(known)}, got {','.join(chosen)}")
    missing = [name for name in REQUIREMENTS if importlib.util.find_spec(name) is None]
    if missing:
        print(f"gpu_scale: missing modules: {', '.join(missing)} (pip install -e '.[train]')", file=sys.stderr)
        return 2
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("gpu_scale: no CUDA device (--tiny runs small models on CPU)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still ends the children (run_child)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-scale-"))
    try:
        print(measure(args, models, settings, work))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
