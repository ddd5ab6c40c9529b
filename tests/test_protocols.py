"""Protocol parsing and rendering: the three wire formats, malformed responses, and random text."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pyvision_env.execution import CellResult, CellStatus
from pyvision_env.messages import ImagePart, from_openai, to_openai
from pyvision_env.protocols import PROTOCOLS, EpisodeInputs, ToolCall, ToolOutput, get_protocol
from pyvision_env.tasks import Task

ALL = sorted(PROTOCOLS)


@pytest.mark.parametrize("name", ALL)
def test_rendered_actions_round_trip(name):
    protocol = get_protocol(name)
    code_action = protocol.parse(protocol.render_action(thought="Let me look.", code="x = 1\nprint(x)",
                                                        image_index=0, call_id="call_7"))
    assert code_action.kind == "code" and code_action.calls[0].code == "x = 1\nprint(x)"
    answer = protocol.parse(protocol.render_action(thought="Done.", answer="42"))
    assert answer.kind == "answer" and "42" in answer.answer


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("response, fragment", [
    ("", "empty"), ("   \n\t", "empty"), ("x" * 70000, "characters long"), ("abc\x00def", "NUL"),
])
def test_degenerate_responses_are_invalid_with_a_reason(name, response, fragment):
    action = get_protocol(name).parse(response)
    assert action.kind == "invalid" and fragment in action.error


def test_pyvision_format_details():
    p = get_protocol("pyvision")
    assert p.parse("<code>\n```python\nprint(1)\n```\n</code><answer>\\boxed{3}</answer>").kind == "answer"
    two = p.parse("<code>\n```python\na = 1\n```\n</code> and <code>\n```python\nb = 2\n```\n</code>")
    assert two.calls[0].code == "b = 2"  # the last block runs, as in released PyVision
    strict = get_protocol("pyvision", multiple_blocks="error").parse(two.response)
    assert strict.kind == "invalid" and "2 code blocks" in strict.error
    assert p.parse("```python\nprint(5)\n```").calls[0].code == "print(5)"  # plain fenced fallback
    assert "not closed" in p.parse("<code>\n```python\nprint(1)\n").error
    assert p.parse("<answer></answer>").kind == "invalid"
    assert p.parse("<answer>\\boxed{B} because").answer == "\\boxed{B} because"  # unclosed answer still ends
    assert "No code block" in p.parse("I think it is a cat.").error
    assert p.parse("<code>\n```python\n\n```\n</code>").error == "The code block is empty."


def test_codevision_format_details():
    p = get_protocol("codevision")
    call = p.parse('<tool_call>{"name": "code_image_tool", "arguments": "{\\"code\\": \\"result = image\\"}"}'
                   '</tool_call>')
    assert call.kind == "code" and call.calls[0].image_index == 0  # arguments as a JSON string, default index
    assert "not valid JSON" in p.parse("<tool_call>{nope}</tool_call>").error
    assert "Unknown tool" in p.parse('<tool_call>{"name": "other", "arguments": {}}</tool_call>').error
    assert "non-negative" in p.parse(p.render_action(code="result = image").replace('"image_index": 0',
                                                                                     '"image_index": -1')).error
    assert "2 tool calls" in p.parse(p.render_action(code="a") * 2).error
    assert "not closed" in p.parse('<tool_call>{"name": "code_image_tool"').error
    assert p.parse("It is \\boxed{7}.").answer == "\\boxed{7}"


def test_openai_tools_format_details():
    p = get_protocol("openai-tools")
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "python", "arguments": '{"code": "print(1)"}'}},
        {"id": "b", "type": "function", "function": {"name": "python", "arguments": '{"code": "print(2)"}'}}]}
    action = p.parse(json.dumps(message))
    assert [c.id for c in action.calls] == ["a", "b"]
    hermes = p.parse('Thinking.\n<tool_call>{"name": "python", "arguments": {"code": "print(3)"}}</tool_call>')
    assert hermes.kind == "code" and hermes.calls[0].code == "print(3)"
    assert p.parse("The answer is \\boxed{4}.").answer == "The answer is \\boxed{4}."
    bad_args = dict(message, tool_calls=[{"id": "a", "function": {"name": "python", "arguments": "{oops"}}])
    assert "not valid JSON" in p.parse(json.dumps(bad_args)).error
    assert "Unknown tool" in p.parse(json.dumps(dict(message, tool_calls=[
        {"id": "a", "function": {"name": "bash", "arguments": "{}"}}]))).error
    assert p.parse('{"content": ""}').kind == "invalid"
    # the assistant message in history carries the calls, so a client can send the conversation back
    assert p.assistant_message(json.dumps(message)).tool_calls[1]["id"] == "b"


CALL = ToolCall("x", id="c1")


def _output(result, images=(), first=1):
    return ToolOutput(CALL, result, list(images), first_index=first)


@pytest.mark.parametrize("name", ALL)
def test_tool_results_render_text_images_and_errors(name):
    p = get_protocol(name)
    image = Image.new("RGB", (8, 6), "red")
    ok = p.tool_messages([_output(CellResult(CellStatus.OK, stdout="hello\n"), [image])])
    assert "hello" in "".join(m.plain_text for m in ok)
    assert [part.image for m in ok for part in m.content if isinstance(part, ImagePart)] == [image]
    error = CellResult(CellStatus.ERROR, error_name="ZeroDivisionError", error_value="division by zero",
                       traceback="ZeroDivisionError: division by zero")
    assert "ZeroDivisionError" in "".join(m.plain_text for m in p.tool_messages([_output(error)]))
    timeout = CellResult(CellStatus.TIMEOUT, error_value="cell exceeded 1 s")
    assert "TimeoutError" in "".join(m.plain_text for m in p.tool_messages([_output(timeout)]))
    crash = CellResult(CellStatus.CRASHED, error_value="the kernel died", state_lost=True)
    assert "variables are lost" in "".join(m.plain_text for m in p.tool_messages([_output(crash)]))


def test_pyvision_numbers_images_like_released_models():
    p = get_protocol("pyvision")
    images = [Image.new("RGB", (4, 4)), Image.new("RGB", (5, 5))]
    (message,) = p.tool_messages([_output(CellResult(CellStatus.OK), images, first=3)])
    text = message.plain_text
    assert "<image_clue_3></image_clue_3>" in text and "<image_clue_4></image_clue_4>" in text
    assert text.startswith("<tool_response>\n<interpreter>\nText Result:") and "Image Result:" in text
    task = Task(id="t", question="Which?", answer="A", choices=("cat", "dog"), grader="choice")
    first = p.initial_messages(EpisodeInputs(task, [images[0]], [(4000, 3000)]))
    assert first[0].role == "system" and "Image width: 4000, height: 3000" in first[1].plain_text
    assert "(A) cat" in first[1].plain_text
    assert get_protocol("pyvision", system_prompt="").initial_messages(
        EpisodeInputs(task, [images[0]], [(4, 4)]))[0].role == "user"


def test_openai_tools_images_in_a_user_message_when_asked():
    p = get_protocol("openai-tools", images_in_tool_message=False)
    image = Image.new("RGB", (3, 3))
    messages = p.tool_messages([_output(CellResult(CellStatus.OK, stdout="x\n"), [image])])
    assert [m.role for m in messages] == ["tool", "user"] and messages[0].tool_call_id == "c1"
    assert from_openai(to_openai(messages)) == messages


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=400) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_any_text_parses_without_raising(name, text):
    action = get_protocol(name).parse(text)
    assert action.kind in ("code", "answer", "invalid")
    assert (action.error is not None) == (action.kind == "invalid")
    if action.kind == "code":
        assert action.calls and all(call.code.strip() for call in action.calls)


TAGS = ["<code>", "</code>", "```python\n", "```", "<answer>", "</answer>", "\\boxed{", "}", "<tool_call>",
        "</tool_call>", '{"name": "python", "arguments": {"code": "', '"}}', "\n", "print(1)", "{", '"']


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.sampled_from(TAGS) | st.text(max_size=8), max_size=14))
def test_tag_soup_parses_without_raising(name, pieces):
    action = get_protocol(name).parse("".join(pieces))
    assert action.kind in ("code", "answer", "invalid")


def test_unknown_protocol_and_non_string_action():
    with pytest.raises(ValueError, match="unknown protocol"):
        get_protocol("nope")
    with pytest.raises(TypeError, match="response text"):
        get_protocol("pyvision").parse(b"bytes")
