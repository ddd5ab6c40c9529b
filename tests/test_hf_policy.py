"""The Hugging Face policy with the tiny offline Qwen2.5-VL: rendering against the model's own template,
batched generation equal to one-by-one, the image budget, and whole episodes in the environment."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from agents.base import Conversation  # noqa: E402
from agents.hf import HFChatModel, HFPolicy, ModelLoadError, Sampling  # noqa: E402
from agents.tiny_model import make_tiny_model  # noqa: E402
from pyvision_env import PyVisionEnv  # noqa: E402
from pyvision_env.messages import ImagePart, Message, TextPart  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return HFChatModel(make_tiny_model(tmp_path_factory.mktemp("tiny")), device="cpu", seed=0)


def picture(seed: int, size=(120, 90)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def multi_turn() -> list[Message]:
    return [Message.text("system", "Answer with code."),
            Message("user", (TextPart("<image_clue_0>"), ImagePart(picture(0)), TextPart("</image_clue_0>\nWhat?"))),
            Message.text("assistant", "<code>\n```python\nprint(1)\n```\n</code>"),
            Message("user", (TextPart("Image Result:\n"), ImagePart(picture(1, (60, 200))), TextPart("done"))),
            Message.text("assistant", "<answer>\\boxed{3}</answer>"),
            Message.text("user", "Are you sure?")]


def qwen_processor(model):
    """Qwen2.5-VL's own processor. Without torchvision its video processor cannot be built, so then an
    image-only subclass: the same ``__call__`` and chat-template code, minus the video attribute."""
    from transformers import Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    try:
        return Qwen2_5_VLProcessor(image_processor=model.image_processor, tokenizer=model.tokenizer,
                                   chat_template=model.tokenizer.chat_template)
    except (AttributeError, ImportError, TypeError, ValueError):
        pass

    class ImageOnlyQwenProcessor(Qwen2_5_VLProcessor):
        @classmethod
        def get_attributes(cls):
            return ["image_processor", "tokenizer"]

        def __init__(self, image_processor, tokenizer, chat_template):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id, self.video_token_id = tokenizer.convert_tokens_to_ids([self.image_token,
                                                                                         self.video_token])
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyQwenProcessor(model.image_processor, model.tokenizer, model.tokenizer.chat_template)


def test_rendering_matches_the_model_processor_token_for_token(model):
    messages = multi_turn()
    ours = model.inputs([messages])
    processor = qwen_processor(model)
    theirs = processor.apply_chat_template(model.template_messages_with_images(messages), tokenize=True,
                                           return_dict=True, add_generation_prompt=True, return_tensors="pt")
    assert ours["input_ids"].tolist() == theirs["input_ids"].tolist()
    assert torch.equal(ours["image_grid_thw"], theirs["image_grid_thw"])


def test_rendering_follows_the_chat_template(model):
    messages = multi_turn()
    text, images = model.render(messages)
    assert len(images) == 2
    template = model.tokenizer.apply_chat_template(model.template_messages(messages), tokenize=False,
                                                   add_generation_prompt=True)
    grids = model.image_processor(images=images, return_tensors="pt")["image_grid_thw"]
    counts = (grids.prod(dim=1) // 4).tolist()
    assert text.count("<|image_pad|>") == sum(counts)
    assert text.replace("<|image_pad|>", "") == template.replace("<|image_pad|>", "")  # the same text around
    assert text.endswith("<|im_start|>user\nAre you sure?<|im_end|>\n<|im_start|>assistant\n")
    ids = model.inputs([messages])["input_ids"][0].tolist()
    assert ids.count(model.config.image_token_id) == sum(counts)
    assert ids == model.tokenizer(text)["input_ids"]


def test_batched_generation_equals_one_by_one(model):
    conversations = [multi_turn()[:2], [Message.text("user", "Hello there, a longer question without images")],
                     multi_turn()]
    greedy = Sampling(max_new_tokens=8, temperature=0.0)
    batched = model.generate(conversations, greedy)
    single = [model.generate([conversation], greedy)[0] for conversation in conversations]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.prompt_tokens for g in batched] == [g.prompt_tokens for g in single]
    assert all(g.finish_reason in ("stop", "length") and g.completion_tokens <= 9 for g in batched)


def test_image_budget_drops_old_images_with_their_tokens(model):
    conversation = Conversation(context_images=1)
    conversation.observe(multi_turn()[:2], {"turn": 0})
    conversation.respond(Message.text("assistant", "<code>x</code>"))
    conversation.observe([multi_turn()[3]], {"turn": 1})
    visible = conversation.visible()
    assert sum(len(m.images) for m in visible) == 1 and Conversation.OMITTED in visible[1].plain_text
    text, images = model.render(visible)
    assert len(images) == 1 and images[0].size == (60, 200)
    full_text, _ = model.render(conversation.messages)
    assert text.count("<|image_pad|>") < full_text.count("<|image_pad|>")
    assert text.count("<|vision_start|>") == 1  # the dropped image's markers left with it
    by_tokens = Conversation(context_visual_tokens=20)  # the images cost 12 and 14 tokens (Qwen2.5-VL rule)
    by_tokens.observe(multi_turn()[:4], {"turn": 0})
    assert sum(len(m.images) for m in by_tokens.visible()) == 1


def test_context_overflow_and_bad_model_paths_are_clear(model, tmp_path):
    small = HFChatModel.__new__(HFChatModel)
    small.__dict__.update(model.__dict__, max_context=10)
    with pytest.raises(ValueError, match="context holds 10"):
        small.inputs([multi_turn()])
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        HFChatModel(tmp_path / "missing")


def test_policy_plays_episodes_in_the_env(model, engine):
    policy = HFPolicy(model, max_new_tokens=16, temperature=1.0)
    env = PyVisionEnv("count", engine=engine, max_turns=2)
    observation, info = env.reset(seed=0)
    done = False
    while not done:
        observation, _, terminated, truncated, info = env.step(policy.act(observation, info))
        done = terminated or truncated
    assert info["turn"] >= 1 and info["end_reason"] is not None
    assert len(policy.usage) == info["turn"] and all(u["completion_tokens"] >= 1 for u in policy.usage)
    assert policy.usage[-1]["prompt_tokens"] > policy.usage[0]["prompt_tokens"]  # the context grew
    env.close()


def test_model_without_a_chat_template_is_refused(tmp_path):
    import json

    folder = make_tiny_model(tmp_path / "no-template")
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="no chat template"):
        HFChatModel(folder, device="cpu")


def test_qwen2_vl_family_plays_too(tmp_path, engine):
    qwen2 = HFChatModel(make_tiny_model(tmp_path / "qwen2", family="qwen2-vl"), device="cpu")
    assert type(qwen2.model).__name__ == "Qwen2VLForConditionalGeneration"
    messages = multi_turn()
    greedy = Sampling(max_new_tokens=6, temperature=0.0)
    assert [g.text for g in qwen2.generate([messages, messages[:2]], greedy)] == \
        [qwen2.generate([m], greedy)[0].text for m in (messages, messages[:2])]
    env = PyVisionEnv("zoom", engine=engine, max_turns=1)
    observation, info = env.reset(seed=0)
    _, _, _, truncated, info = env.step(HFPolicy(qwen2, max_new_tokens=8).act(observation, info))
    assert truncated and info["end_reason"] == "max_turns"
    env.close()
