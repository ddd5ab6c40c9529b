"""Training PyVision agents: multi-turn GRPO with OFR batch selection and the accumulative tool reward, and a
supervised cold start (``torch`` + ``transformers``, from the ``train`` extra; ``vllm`` and ``ray`` optional).

* :mod:`trainers.config` — the typed configurations (YAML plus ``--set key=value``);
* :mod:`trainers.grpo`, :mod:`trainers.sft` — the trainers; :mod:`trainers.reference_grpo` — the whole
  algorithm in one readable file;
* :mod:`trainers.rollout`, :mod:`trainers.tokens`, :mod:`trainers.backends` — token-in/token-out episodes on the
  vector environments, generated with Hugging Face or vLLM;
* :mod:`trainers.ofr`, :mod:`trainers.objective` — batch selection and the loss (no torch needed for OFR);
* :mod:`trainers.demo` — the CPU demo (``make demo``); :mod:`trainers.commands` — ``pyvision train``, ``sft``,
  ``train-demo``.
"""
