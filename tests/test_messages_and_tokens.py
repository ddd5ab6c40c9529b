"""Message conversion (OpenAI / Hugging Face) and visual-token accounting against transformers' own rule."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pyvision_env.messages import (
    ImagePart,
    Message,
    TextPart,
    from_hf,
    from_openai,
    image_from_data_url,
    to_hf,
    to_openai,
)
from pyvision_env.visual_tokens import VisualTokenRule


def conversation():
    red, grey = Image.new("RGB", (5, 3), "red"), Image.new("L", (2, 2), 128)
    return [Message.text("system", "Be brief."),
            Message("user", (TextPart("<image_clue_0>"), ImagePart(red), TextPart("</image_clue_0>\nWhat?"))),
            Message("assistant", (), tool_calls=({"id": "c", "type": "function",
                                                  "function": {"name": "python", "arguments": "{}"}},)),
            Message("tool", (TextPart("ok"), ImagePart(grey)), tool_call_id="c")]


def test_openai_and_hf_round_trips_are_lossless():
    messages = conversation()
    assert from_openai(to_openai(messages)) == messages
    assert from_hf(to_hf(messages)) == messages
    openai = to_openai(messages)
    assert openai[1]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert openai[3]["tool_call_id"] == "c" and openai[2]["tool_calls"][0]["id"] == "c"
    hf = to_hf(messages)
    assert hf[1]["content"][1] == {"type": "image", "image": messages[1].content[1].image}


def test_images_compare_by_pixels_and_bad_inputs_are_refused():
    assert ImagePart(Image.new("RGB", (2, 2), "red")) == ImagePart(Image.new("RGB", (2, 2), "red"))
    assert ImagePart(Image.new("RGB", (2, 2), "red")) != ImagePart(Image.new("RGB", (2, 2), "blue"))
    with pytest.raises(ValueError, match="role"):
        Message.text("robot", "hi")
    with pytest.raises(ValueError, match="remote URLs are never fetched"):
        image_from_data_url("https://example.com/cat.png")
    with pytest.raises(ValueError, match="not a decodable image"):
        image_from_data_url("data:image/png;base64,AAAA")
    with pytest.raises(ValueError, match="unsupported content part"):
        from_openai([{"role": "user", "content": [{"type": "audio"}]}])


@settings(max_examples=100, deadline=None)
@given(width=st.integers(1, 5000), height=st.integers(1, 5000),
       max_pixels=st.sampled_from([256 * 28 * 28, 1024 * 28 * 28, 16384 * 28 * 28]))
def test_qwen_rule_matches_transformers_smart_resize(width, height, max_pixels):
    smart_resize = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl").smart_resize
    if max(width, height) / min(width, height) > 200:
        with pytest.raises(ValueError, match="aspect ratio"):
            VisualTokenRule(max_pixels=max_pixels).count(width, height)
        return
    expected_h, expected_w = smart_resize(height, width, factor=28, min_pixels=3136, max_pixels=max_pixels)
    rule = VisualTokenRule(max_pixels=max_pixels)
    assert rule.resized_size(width, height) == (expected_w, expected_h)
    assert rule.count(width, height) == (expected_w // 28) * (expected_h // 28)


def test_families_and_bad_settings():
    assert VisualTokenRule.for_family("llava-1.5").count(4000, 3000) == 576
    assert VisualTokenRule.for_family("qwen3-vl").factor == 32
    with pytest.raises(ValueError, match="unknown model family"):
        VisualTokenRule.for_family("gpt-9")
    with pytest.raises(ValueError, match="min_pixels"):
        VisualTokenRule(min_pixels=10, max_pixels=5)
    with pytest.raises(ValueError, match="positive"):
        VisualTokenRule().count(0, 10)
