"""The tiny offline Qwen2.5-VL: built by the CLI, loads with from_pretrained, renders Qwen's chat format and
generates from text and images, deterministically for a seed."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from agents.tiny_model import load_tiny_model, make_tiny_model  # noqa: E402
from pyvision_env.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen")
    assert main(["make-tiny-model", str(path), "--seed", "3"]) == 0
    return path


def generate(model, tokenizer, image_processor, messages, images, **kwargs):
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = {}
    if images:
        inputs = dict(image_processor(images=images, return_tensors="pt"))
        counts = (inputs["image_grid_thw"].prod(dim=1) // 4).tolist()
        pieces = text.split("<|image_pad|>")
        text = pieces[0] + "".join("<|image_pad|>" * n + rest for n, rest in zip(counts, pieces[1:]))
    encoded = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**encoded, **inputs, max_new_tokens=12, do_sample=False, **kwargs)
    return output[0, encoded["input_ids"].shape[1]:].tolist()


def test_loads_and_is_tiny(tiny):
    model, tokenizer, _ = load_tiny_model(tiny)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    for token in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"):
        assert len(tokenizer.tokenize(token)) == 1, token
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert tokenizer.decode(tokenizer("print(image_clue_0.size)")["input_ids"]) == "print(image_clue_0.size)"


def test_chat_template_is_qwen2_vl_wire_format(tiny):
    _, tokenizer, _ = load_tiny_model(tiny)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
                {"role": "assistant", "content": "A cat."}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is it?<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n<|im_start|>assistant\n")


def test_generates_from_images_deterministically(tiny, tmp_path):
    model, tokenizer, image_processor = load_tiny_model(tiny)
    images = [Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 140, 3), dtype=np.uint8))]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    first = generate(model, tokenizer, image_processor, messages, images)
    assert len(first) >= 1 and first == generate(model, tokenizer, image_processor, messages, images)
    rebuilt = load_tiny_model(make_tiny_model(tmp_path / "again", seed=3))
    assert generate(*rebuilt, messages, images) == first  # the same seed builds the same model
    other = load_tiny_model(make_tiny_model(tmp_path / "other", seed=4))
    assert not torch.equal(other[0].lm_head.weight, model.lm_head.weight)


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="make-tiny-model"):
        load_tiny_model(tmp_path / "nothing-here")


def test_phrase_tokens_and_init_std_build_the_demo_model(tmp_path, capsys):
    from transformers import AutoTokenizer

    from trainers.demo import TINY_MODEL, tokenizer_corpus

    corpus = tokenizer_corpus()
    conversation = next(text for text in corpus if "Text Result:" in text)
    plain = AutoTokenizer.from_pretrained(make_tiny_model(tmp_path / "plain", corpus=corpus))
    folder = tmp_path / "demo"
    assert main(["train-demo", "--model-only", "--out", str(folder)]) == 0
    assert main(["make-tiny-model", str(tmp_path / "old"), "--demo"]) == 0  # the old way, for one release
    assert "DeprecationWarning: `pyvision make-tiny-model --demo`" in capsys.readouterr().err
    assert (tmp_path / "old" / "tokenizer.json").read_text() == (folder / "tokenizer.json").read_text()
    phrases = AutoTokenizer.from_pretrained(folder)  # loads with the phrase pre-tokenizer, not Qwen's word regex
    ids = phrases(conversation)["input_ids"]
    assert phrases.decode(ids) == conversation
    assert len(ids) * 2.5 < len(plain(conversation)["input_ids"])
    for special in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"):
        assert ids.count(phrases.convert_tokens_to_ids(special)) == conversation.count(special), special
    assert "255" in phrases.convert_ids_to_tokens(phrases("== (255, 0, 0)")["input_ids"])  # numbers stay whole
    model, _, _ = load_tiny_model(folder)
    weights = model.model.language_model.layers[0].self_attn.q_proj.weight
    assert abs(float(weights.std()) - TINY_MODEL["init_std"]) < 0.01
