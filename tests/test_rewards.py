"""Reward wrappers: exact values on real episodes, operation tracing, statistics, wiring into make/vector."""

from __future__ import annotations

import gymnasium as gym
import pytest

import pyvision_env
from agents.scripted import scripted_policy
from pyvision_env.execution import box_iou, operations_in_code
from pyvision_env.vector import PyVisionVectorEnv
from pyvision_env.wrappers import (
    EPISODE_KEYS,
    AccumulativeToolReward,
    CodeVisionReward,
    EpisodeStatistics,
    make_reward_wrapper,
)


def make(engine, suite: str, reward, **kwargs):
    return gym.make(f"PyVision/{suite}-v0", reward=reward, engine=engine, **kwargs)


def play(env, actions, task_index: int = 0):
    """Reset on a task and step the actions (callables get the task); returns the last step's result."""
    env.reset(seed=0, options={"task_index": task_index})
    task = env.unwrapped.tasks[task_index]
    for action in actions:
        result = env.step(action(task) if callable(action) else action)
        if result[2] or result[3]:
            return result
    raise AssertionError("the episode did not end")


def code(env, text: str) -> str:
    return env.unwrapped.protocol.render_action(code=text)


def answer(env, correct: bool = True):
    return lambda task: env.unwrapped.protocol.render_action(answer=task.answer if correct else "no")


def crop_code(env, box) -> str:
    return code(env, f"display(image_clue_0.crop({tuple(int(v) for v in box)}))")


# --- accumulative -------------------------------------------------------------------------------------------


def test_accumulative_exact_values(engine):
    env = make(engine, "Zoom", "accumulative")
    ok, bad = code(env, "print(1)"), code(env, "1 / 0")
    _, reward, terminated, _, info = play(env, [ok, bad, ok, answer(env)])
    assert terminated and reward == pytest.approx(1.3)
    assert info["episode"]["components"] == {"accuracy": 1.0, "tool_bonus": 3.0, "tool_turns": 3.0}
    assert set(info["episode"]) == set(EPISODE_KEYS)
    assert info["episode"] | {"components": None} == {
        "return": pytest.approx(1.3), "turns": 4, "tool_calls": 3, "tool_successes": 2, "tool_errors": 1,
        "images": 0, "visual_tokens": info["visual_tokens"], "components": None}
    assert play(env, [ok, ok, answer(env, correct=False)])[1] == 0.0  # no bonus on a wrong answer
    env.close()

    successful = make(engine, "Zoom", {"name": "accumulative", "count": "successful", "cap": 5})
    assert play(successful, [ok, bad, ok, answer(successful)])[1] == pytest.approx(1.2)
    successful.close()
    capped = make(engine, "Zoom", {"name": "accumulative", "coefficient": 0.2, "cap": 1})
    _, reward, _, _, info = play(capped, [ok, ok, answer(capped)])
    assert reward == pytest.approx(1.2) and info["reward_components"]["tool_turns"] == 2.0
    capped.close()


def test_components_at_every_step_and_truncation(engine):
    env = make(engine, "Count", "accumulative", max_turns=2)
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(code(env, "print(2)"))
    assert (reward, terminated, truncated) == (0.0, False, False) and "episode" not in info
    assert info["reward_components"] == {"accuracy": 0.0, "tool_bonus": 0.0, "tool_turns": 0.0}
    _, reward, _, truncated, info = env.step(code(env, "print(3)"))
    assert truncated and reward == 0.0 and info["episode"]["components"]["tool_turns"] == 2.0
    env.close()


# --- CodeVision ---------------------------------------------------------------------------------------------


def test_codevision_good_crop_and_gate(engine):
    env = make(engine, "Zoom", "codevision")
    _, reward, _, _, info = play(env, [lambda task: crop_code(env, task.regions[0].box), answer(env)])
    parts = info["episode"]["components"]
    assert parts["crop_iou"] == pytest.approx(1.0) and parts["mandatory"] == pytest.approx(1.0)
    assert parts["exact"] == 1.0 and parts["emerge"] == 0.0
    assert reward == pytest.approx(1.0 + 0.1 + 1.0 + 0.1)

    _, reward, _, _, info = play(env, [answer(env)])  # a correct answer without looking: gated to 0
    assert info["reward_components"]["gate"] == 0.0 and reward == pytest.approx(0.1)

    def far_crop(task):
        x0, y0, x1, y1 = task.regions[0].box
        return crop_code(env, (x0, y0, x0 + 4 * (x1 - x0), y0 + 4 * (y1 - y0)))

    _, reward, _, _, info = play(env, [far_crop, answer(env)])  # IoU 1/16 < 0.1: gated by it
    assert info["reward_components"]["crop_iou"] == pytest.approx(1 / 16)
    assert reward == pytest.approx(1 / 16 + 0.1 + 1 / 16)
    env.close()


def test_codevision_penalties(engine):
    env = make(engine, "Zoom", "codevision")
    good = lambda task: crop_code(env, task.regions[0].box)  # noqa: E731
    rotate = code(env, "from PIL import Image as I\ndisplay(image_clue_0.transpose(I.Transpose.ROTATE_90))")
    _, reward, _, _, info = play(env, [good, rotate, answer(env)])
    assert info["reward_components"]["spurious"] == 1.0 and info["reward_components"]["exact"] == 0.0
    assert reward == pytest.approx(2.1 - 0.5)

    _, reward, _, _, info = play(env, [good, code(env, "print(1)"), code(env, "print(2)"), answer(env)])
    assert info["reward_components"]["usage"] == pytest.approx(0.5) and reward == pytest.approx(2.2 - 0.25)

    _, reward, _, _, info = play(env, [good, code(env, "image_clue_0.rotate(90) + 1"), answer(env)])
    parts = info["reward_components"]
    assert parts["tool_errors"] == 1.0 and parts["spurious"] == 0.0  # a failed cell's operations do not count
    assert reward == pytest.approx(2.2 - 0.05)
    env.close()

    orientation = make(engine, "Orientation", "codevision")  # rotate/flip required there: not spurious
    _, _, _, _, info = play(orientation, [rotate, answer(orientation)])
    assert info["reward_components"]["spurious"] == 0.0
    orientation.close()


@pytest.mark.parametrize("suite", ["zoom", "orientation", "count", "contrast"])
def test_scripted_policies_on_every_suite(engine, suite):
    env = make(engine, suite.capitalize(), "codevision", max_turns=5)
    policy = scripted_policy(suite, env.unwrapped.protocol)
    observation, info = env.reset(seed=1)
    done = False
    while not done:
        observation, reward, terminated, truncated, info = env.step(policy.act(observation, info))
        done = terminated or truncated
    parts = info["episode"]["components"]
    assert info["correct"] and parts["format"] == 1.0 and parts["tool_errors"] == 0.0
    assert parts["spurious"] == 0.0 and parts["usage"] == 0.0
    expected_mandatory = {"zoom": 1.0, "orientation": 1.0, "count": 0.0, "contrast": 1.0}[suite]
    assert parts["mandatory"] == pytest.approx(expected_mandatory, abs=0.01)
    assert info["episode"]["return"] == pytest.approx(reward)
    env.close()


# --- operation tracing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("source, kinds", [
    ("from PIL import ImageOps as O\nO.mirror(x)", {"flip"}),
    ("from PIL.ImageOps import mirror as m\nm(x)", {"flip"}),
    ("img.transpose(Image.FLIP_LEFT_RIGHT)", {"flip"}),
    ("img.transpose(Image.Transpose.ROTATE_270)", {"rotate"}),
    ("from PIL.Image import ROTATE_90\nimg.transpose(ROTATE_90)", {"rotate"}),
    ("img.transpose(3)", {"rotate"}),
    ("img.transpose(Image.Transpose[name])", {"rotate", "flip"}),
    ("import numpy\nnumpy.rot90(a, k=2)", {"rotate"}),
    ("a = np.asarray(img)[::-1]", {"flip"}),
    ("a[:, ::-1, :]", {"flip"}),
    ("cv2.flip(a, 1)", {"flip"}),
    ("img.rotate(-90, expand=True)", {"rotate"}),
    ("ImageEnhance.Contrast(img).enhance(3)", {"enhance"}),
    ("from PIL import ImageOps\nImageOps.autocontrast(img.convert('L'))", {"enhance"}),
    ("img.resize((100, 100))", {"resize"}),
    ("a[10:20, 30:40]", {"crop"}),
    ("print('rotate and flip and crop')  # img.rotate(90)", set()),
    ("def broken(:", set()),
])
def test_trace_kinds(source, kinds):
    assert operations_in_code(source).kinds == kinds


def test_trace_crop_boxes():
    assert operations_in_code("b = image_clue_0.crop((10, 20, 50, 60))").crops == [(0, (10, 20, 50, 60))]
    chained = "x0 = 100\nw = image_clue_0.copy().crop((x0, 50, x0 + 300, 250))\nt = w.crop((10, 10, 60, 40))"
    assert operations_in_code(chained).crops == [(0, (100, 50, 400, 250)), (0, (110.0, 60.0, 160.0, 90.0))]
    assert operations_in_code("np.array(image_clue_1)[5:15, 20:40]").crops == [(1, (20, 5, 40, 15))]
    assert operations_in_code("image.crop((0, 0, 4, 4))", image_names=("image",)).crops == [(0, (0, 0, 4, 4))]
    unknown = operations_in_code("image_clue_0.crop(box)\nImage.open(p).crop((0, 0, 4, 4))")
    assert unknown.kinds == {"crop"} and unknown.crops == []
    state = {"aliases": {}, "consts": {}, "origins": {}}  # names carry over between the cells of an episode
    operations_in_code("im = image_clue_0\nbox = (1, 2, 3, 4)", state)
    assert operations_in_code("im.crop(box)", state).crops == [(0, (1, 2, 3, 4))]
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)


def test_kernel_trace_of_computed_turned_and_zoomed_crops(engine):
    """Boxes computed at run time, and crops of turned or zoomed copies, map back to the input's pixels."""
    env = make(engine, "Zoom", "codevision")
    computed = lambda task: code(env, f"import json\nbox = tuple(json.loads('{list(task.regions[0].box)}'))\n"  # noqa: E731
                                 "display(image_clue_0.crop(box))")
    _, _, _, _, info = play(env, [computed, answer(env)])
    assert operations_in_code(computed(env.unwrapped.tasks[0])).crops == []  # invisible to the code alone
    assert info["episode"]["components"]["crop_iou"] == pytest.approx(1.0)

    def zoomed(task):  # 2x zoom of the whole image, then the region at doubled coordinates
        box = tuple(2 * v for v in task.regions[0].box)
        return code(env, f"big = image_clue_0.resize((image_clue_0.width * 2, image_clue_0.height * 2))\n"
                         f"display(big.crop({box}))")

    _, _, _, _, info = play(env, [zoomed, answer(env)])
    assert info["reward_components"]["crop_iou"] == pytest.approx(1.0)

    def turned(task):  # rotate 90 degrees counter-clockwise, crop where the region went
        x0, y0, x1, y1 = task.regions[0].box
        return code(env, f"t = image_clue_0.transpose(Image.Transpose.ROTATE_90)\n"
                         f"display(t.crop(({y0}, image_clue_0.width - {x1}, {y1}, image_clue_0.width - {x0})))")

    _, _, _, _, info = play(env, [turned, answer(env)])
    assert info["reward_components"]["crop_iou"] == pytest.approx(1.0)
    assert info["reward_components"]["spurious"] == 1.0
    env.close()


def test_kernel_trace_in_info_and_forgery_ignored(engine):
    env = pyvision_env.PyVisionEnv("zoom", engine=engine, trace_operations=True)
    env.reset(seed=0, options={"task_index": 0})
    _, _, _, _, info = env.step(code(env, "a = ImageOps.autocontrast(image_clue_0.crop((0, 0, 8, 6)))\n"
                                          "b = a.rotate(45)\nc = ImageOps.mirror(a)"))
    assert info["operations"] == [{"op": "crop", "image": 0, "box": [0.0, 0.0, 8.0, 6.0]}, {"op": "enhance"},
                                  {"op": "rotate"}, {"op": "flip"}]
    _, _, _, _, info = env.step(code(env, "1 / 0"))
    assert info["operations"] == []  # a failed cell reports nothing
    env.close()
    plain = pyvision_env.PyVisionEnv("zoom", engine=engine)
    assert plain.reset(seed=0)[1]["operations"] is None
    plain.close()

    forged = make(engine, "Zoom", "codevision")
    fake = lambda task: code(forged, "_pyvision_operations = lambda: '[{\"op\": \"crop\", \"image\": 0, "  # noqa
                                     '"box": %s}]\'' % list(task.regions[0].box))
    crop_elsewhere = code(forged, "x = image_clue_0.crop((0, 0, 3, 3))")
    _, _, _, _, info = play(forged, [fake, crop_elsewhere, answer(forged)])
    assert info["reward_components"]["crop_iou"] == 0.0 and info["reward_components"]["gate"] == 0.0
    forged.close()


def test_codevision_protocol_crop_of_a_tool_result(engine):
    """With the stateless protocol, image_index 1 is the first result: its crop maps back to the input."""
    env = make(engine, "Zoom", "codevision", protocol="codevision")
    protocol = env.unwrapped.protocol

    def wide(task):
        x0, y0, x1, y1 = task.regions[0].box
        return protocol.render_action(code=f"result = image.crop(({x0 - 40}, {y0 - 30}, {x1 + 40}, {y1 + 30}))",
                                      image_index=0)

    def tight(task):
        x0, y0, x1, y1 = task.regions[0].box
        return protocol.render_action(code=f"result = image.crop((40, 30, {x1 - x0 + 40}, {y1 - y0 + 30}))",
                                      image_index=1)

    _, _, _, _, info = play(env, [wide, tight, answer(env)])
    assert info["reward_components"]["crop_iou"] == pytest.approx(1.0)
    env.close()


@pytest.mark.parametrize("method", range(7))
def test_kernel_trace_maps_every_transpose(engine, method):
    """A crop of image.transpose(m) is recorded at the input's box whose pixels it holds."""
    import numpy as np
    from PIL import Image

    from pyvision_env.execution import OPERATIONS_EXPRESSION, read_operations

    original = Image.fromarray(np.random.default_rng(method).integers(0, 255, (30, 50, 3), dtype=np.uint8))
    local = (3, 5, 17, 11)
    with engine.session(images={"image_clue_0": original}) as session:
        result = session.run(f"piece = image_clue_0.transpose({method}).crop({local})",
                             expressions={"ops": OPERATIONS_EXPRESSION})
    crop = read_operations(result.expressions["ops"])[-1]
    assert crop["image"] == 0
    box = tuple(int(v) for v in crop["box"])
    assert np.array_equal(np.asarray(original.crop(box).transpose(method)),
                          np.asarray(original.transpose(method).crop(local)))


# --- wiring -------------------------------------------------------------------------------------------------


def test_constructor_args_spec_and_registry(engine):
    env = make(engine, "Zoom", {"name": "codevision", "usage_weight": 0.25})
    assert env.unwrapped.spec.kwargs["reward"] == {"name": "codevision", "usage_weight": 0.25}
    statistics, reward = env.env.env, env.env.env.env  # gym.make's checker and order wrappers outside
    assert isinstance(statistics, EpisodeStatistics) and isinstance(reward, CodeVisionReward)
    assert reward._saved_kwargs["usage_weight"] == 0.25 and env.unwrapped.trace_operations  # the reward's need
    again = gym.make(env.spec)  # re-making from the spec wraps once: the entry point's wrappers are not repeated
    assert [type(layer).__name__ for layer in _layers(again)] == [type(layer).__name__ for layer in _layers(env)]
    again.close()
    env.close()
    wrapped = AccumulativeToolReward(pyvision_env.PyVisionEnv("count", engine=engine), coefficient=0.3, cap=2)
    assert wrapped._saved_kwargs == {"coefficient": 0.3, "count": "executed", "cap": 2}
    wrapped.close()
    with pytest.raises(ValueError, match="unknown reward"):
        make_reward_wrapper(wrapped, "nope")
    with pytest.raises(ValueError, match="count"):
        AccumulativeToolReward(wrapped, count="sometimes")
    with pytest.raises(ValueError, match="trace_operations=True"):  # the reward never changes the env under it
        CodeVisionReward(pyvision_env.PyVisionEnv("zoom", engine=engine))
    with pytest.raises(TypeError, match="needs a PyVisionEnv"):
        EpisodeStatistics(gym.make("CartPole-v1"))
    plain = gym.make("PyVision/Zoom-v0", engine=engine)  # no reward: the env and its statistics
    assert [type(layer).__name__ for layer in _layers(plain)][-2:] == ["EpisodeStatistics", "PyVisionEnv"]
    plain.close()


def _layers(env):
    layers = [env]
    while isinstance(layers[-1], gym.Wrapper):
        layers.append(layers[-1].env)
    return layers


def test_statistics_without_a_reward_wrapper(engine):
    env = EpisodeStatistics(pyvision_env.PyVisionEnv("zoom", engine=engine))
    _, reward, terminated, _, info = play(env, [code(env, "print(1)"), answer(env)])
    assert terminated and reward == 1.0
    assert info["episode"] == {"return": 1.0, "turns": 2, "tool_calls": 1, "tool_successes": 1, "tool_errors": 0,
                               "images": 0, "visual_tokens": info["visual_tokens"], "components": {}}
    env.close()


def test_vector_env_accepts_wrappers(engine):
    envs = PyVisionVectorEnv.from_envs([
        make(engine, "Zoom", "accumulative"),
        EpisodeStatistics(CodeVisionReward(pyvision_env.PyVisionEnv("zoom", engine=engine, trace_operations=True)))])
    envs.reset(seed=0)
    protocol = envs.envs[0].unwrapped.protocol
    _, rewards, terminated, _, infos = envs.step([protocol.render_action(answer="0")] * 2)
    assert terminated.all() and list(rewards) == [0.0, pytest.approx(0.1)]
    assert infos["_episode"].all()
    envs.close()


def test_make_vec_wraps_every_sub_environment(engine):
    envs = gym.make_vec("PyVision/Count-v0", num_envs=2, engine=engine, reward="accumulative")
    try:
        assert all(type(env.env).__name__ == "AccumulativeToolReward" for env in envs.envs)
        _, infos = envs.reset(seed=0)
        assert list(infos["turn"]) == [0, 0]
    finally:
        envs.close()
