"""PyVisionEnv end to end on real kernels: the turn loop, budgets, info, observations, Gymnasium conformance."""

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env
from PIL import Image, ImageDraw

from pyvision_env import PyVisionEnv, Task, TaskSet, VisualTokenRule, register_suite
from pyvision_env.env import END_REASONS, TRUNCATING
from pyvision_env.execution import set_default_engine
from pyvision_env.messages import from_hf, from_openai, to_hf, to_openai

INFO_KEYS = {"task_id", "turn", "tool_calls", "tool_errors", "format_errors", "images_shown", "visual_tokens",
             "action_kind", "code", "answer", "format_error", "end_reason", "correct", "score",
             "operations", "frames_fetched"}
SHOW = "plt.figure(figsize=(2, 1)); plt.plot([0, 1]); plt.show()"


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    made = []
    for i, (size, number) in enumerate([((1200, 900), 17), ((600, 400), 305), ((300, 300), 8)]):
        image = Image.new("RGB", size, "white")
        ImageDraw.Draw(image).text((size[0] - 60, size[1] - 40), str(number), fill="black")
        image.save(folder / f"t{i}.png")
        made.append(Task(id=f"t{i}", question="Which number is printed?", answer=str(number), grader="numeric",
                         images=(str(folder / f"t{i}.png"),)))
    return TaskSet("tiny", made)


@pytest.fixture
def make_env(engine, tasks):
    envs = []

    def make(**kwargs):
        env = PyVisionEnv(kwargs.pop("suite", tasks), engine=engine, **kwargs)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


def code(env, source, **kwargs):
    return env.protocol.render_action(code=source, call_id="call_1", **kwargs)


def answer(env, text):
    return env.protocol.render_action(answer=text)


@pytest.mark.parametrize("protocol", ["pyvision", "codevision", "openai-tools"])
def test_a_whole_episode(make_env, protocol):
    env = make_env(protocol=protocol)
    obs, info = env.reset(options={"task_id": "t0"})
    assert set(info) == INFO_KEYS and info["turn"] == 0 and info["end_reason"] is None
    assert obs[-1].role == "user" and len(obs[-1].images) == 1
    source = "result = image.crop((1100, 820, 1200, 900))" if protocol == "codevision" else \
        "print(image_clue_0.size)\ndisplay(image_clue_0.crop((1100, 820, 1200, 900)))"
    obs, reward, terminated, truncated, info = env.step(code(env, source))
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["tool_calls"] == 1 and info["images_shown"] == 1 and info["code"]
    assert sum(len(m.images) for m in obs) == 1
    if protocol != "codevision":
        assert "(1200, 900)" in obs[0].plain_text  # the kernel holds the original, not the downscaled view
    obs, reward, terminated, truncated, info = env.step(answer(env, "17"))
    assert (obs, reward, terminated, truncated) == ([], 1.0, True, False)
    assert info["correct"] is True and info["end_reason"] == "answered" == END_REASONS[0] and info["turn"] == 2
    with pytest.raises(gym.error.ResetNeeded, match="episode ended"):
        env.step(answer(env, "17"))


def test_errors_are_shown_and_the_episode_continues(make_env):
    env = make_env()
    env.reset(seed=1)
    obs, _, terminated, _, info = env.step(code(env, "x = 1 / 0"))
    assert not terminated and info["tool_errors"] == 1 and "ZeroDivisionError" in obs[0].plain_text
    obs, _, terminated, _, info = env.step("I will just think.")
    assert not terminated and info["format_errors"] == 1 and info["action_kind"] == "invalid"
    assert "No code block" in obs[0].plain_text and info["format_error"]
    _, _, _, _, info = env.step(code(env, "print('still here')"))
    assert info["tool_errors"] == 1 and info["tool_calls"] == 2


def test_tool_and_format_errors_can_end_the_episode(make_env):
    env = make_env(on_tool_error="end")
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(code(env, "raise ValueError('no')"))
    assert (reward, terminated, truncated, info["end_reason"]) == (0.0, True, False, "tool_error")
    env = make_env(on_format_error="end")
    env.reset(seed=0)
    _, _, terminated, _, info = env.step("")
    assert terminated and info["end_reason"] == "format_error"


def test_turn_budget_truncates(make_env):
    env = make_env(max_turns=2)
    env.reset(seed=0)
    assert env.step(code(env, "a = 1"))[3] is False
    _, _, terminated, truncated, info = env.step(code(env, "b = 2"))
    assert (terminated, truncated, info["end_reason"]) == (False, True, "max_turns")
    assert "max_turns" in TRUNCATING


def test_image_budget_delivers_what_fits_and_truncates(make_env):
    env = make_env(max_images=2)
    env.reset(seed=0)
    obs, _, _, truncated, info = env.step(code(env, f"for _ in range(3):\n    {SHOW}"))
    assert truncated and info["end_reason"] == "max_images" and info["images_shown"] == 2
    assert sum(len(m.images) for m in obs) == 2 and "1 image(s) not shown" in obs[0].plain_text


def test_visual_token_budget_counts_the_first_view(make_env, tasks):
    rule = VisualTokenRule.for_family("qwen2.5-vl", max_pixels=256 * 28 * 28)
    env = make_env(visual_tokens=rule, max_pixels=None)
    _, info = env.reset(options={"task_id": "t0"})
    first_view = rule.count(1200, 900)
    assert info["visual_tokens"] == first_view <= 256
    obs, _, _, _, info = env.step(code(env, SHOW))
    assert info["visual_tokens"] == first_view + rule.count(*obs[0].images[0].size)
    tight = make_env(visual_tokens=rule, max_pixels=None, max_visual_tokens=first_view + 10)
    tight.reset(options={"task_id": "t0"})
    _, _, _, truncated, info = tight.step(code(tight, SHOW))
    assert truncated and info["end_reason"] == "max_visual_tokens" and info["images_shown"] == 0


def test_observation_images_are_what_the_model_sees(make_env):
    env = make_env(max_pixels=100 * 28 * 28)
    obs, _ = env.reset(options={"task_id": "t0"})
    (image,) = obs[-1].images
    assert image.size == env.token_rule.resized_size(1200, 900) and image.size[0] % 28 == 0
    full = make_env(resize_images=False)
    assert full.reset(options={"task_id": "t0"})[0][-1].images[0].size == (1200, 900)


def test_wall_clock_budget_stops_a_slow_cell(make_env):
    env = make_env(episode_timeout=1.5)
    env.reset(seed=0)
    _, _, terminated, truncated, info = env.step(code(env, "import time\ntime.sleep(30)"))
    assert truncated and not terminated and info["end_reason"] == "timeout"
    assert env.timings["execute_ms"] < 5000 and env.timings["total_ms"] >= env.timings["execute_ms"]


def test_openai_tools_runs_every_call_and_answers_each_id(make_env):
    env = make_env(protocol="openai-tools")
    env.reset(seed=0)
    action = ('{"role": "assistant", "content": null, "tool_calls": ['
              '{"id": "a", "type": "function", "function": {"name": "python", "arguments": "{\\"code\\": \\"n = 2\\"}"}},'
              '{"id": "b", "type": "function", "function": {"name": "python", '
              '"arguments": "{\\"code\\": \\"print(n * 21)\\"}"}}]}')
    obs, _, _, _, info = env.step(action)
    assert [(m.role, m.tool_call_id) for m in obs] == [("tool", "a"), ("tool", "b")]
    assert "42" in obs[1].plain_text and info["tool_calls"] == 2


def test_observations_convert_without_loss(make_env):
    env = make_env()
    obs, _ = env.reset(options={"task_id": "t1"})
    obs += env.step(code(env, SHOW))[0]
    assert from_openai(to_openai(obs)) == obs and from_hf(to_hf(obs)) == obs


def test_task_choice_seeds_and_options(make_env):
    env = make_env()
    picks = [env.reset(seed=s)[1]["task_id"] for s in (5, 6, 5)]
    assert picks[0] == picks[2]
    assert env.reset(options={"task_index": 2})[1]["task_id"] == "t2"
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"task": 1})
    with pytest.raises(ValueError, match="task_index"):
        env.reset(options={"task_index": 9})


def test_bad_configuration_and_bad_task_media(make_env, tmp_path):
    with pytest.raises(ValueError, match="on_tool_error"):
        make_env(on_tool_error="ignore")
    with pytest.raises(ValueError, match="max_turns"):
        make_env(max_turns=0)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    env = make_env(suite=[Task(id="bad", question="?", answer="1", images=(str(broken),))])
    with pytest.raises(Exception, match="bad"):
        env.reset(seed=0)
    env = make_env()
    with pytest.raises(gym.error.ResetNeeded, match="reset"):
        env.step("x")


def test_render_ansi(make_env):
    env = make_env(render_mode="ansi")
    env.reset(seed=0)
    env.step(code(env, "print(1)"))
    assert "ran 'print(1)'" in env.render()


@pytest.fixture
def as_default_engine(engine):
    previous = set_default_engine(engine)
    yield engine
    set_default_engine(previous)


@pytest.mark.parametrize("env_id", ["PyVision/Zoom-v0", "PyVision/Orientation-v0", "PyVision/Count-v0",
                                    "PyVision/Contrast-v0", "PyVision/VideoMeasure-v0", "PyVision/TestEnvCheck-v0"])
def test_gymnasium_check_env_passes_for_registered_envs(as_default_engine, tasks, env_id):
    register_suite("test-env-check", tasks, replace=True, max_turns=4)
    env = gym.make(env_id)
    try:
        check_env(env.unwrapped)
    finally:
        env.close()


def test_kernels_can_start_at_the_first_code_call(make_env, engine):
    env = make_env(kernel_start="first-call")
    engine.warm_up()  # refills of spares taken by earlier tests have finished: the count below moves no more
    started = engine.status().kernels_started
    for _ in range(3):  # episodes that answer without code take no kernel
        env.reset(options={"task_id": "t2"})
        assert env.step(answer(env, "8"))[1] == 1.0
    assert engine.status().kernels_started == started
    env.reset(options={"task_id": "t2"})
    obs, _, _, _, info = env.step(code(env, "print(image_clue_0.size)"))
    assert "(300, 300)" in obs[0].plain_text and info["tool_calls"] == 1
    with pytest.raises(ValueError, match="kernel_start"):
        make_env(kernel_start="later")
