"""Episodes that fork: a session, an environment and a wrapper stack at the same point, then independent.

Real kernels (forked by the factory and new interpreters); what survives a fork is what docs/execution.md says.
"""

from __future__ import annotations

import json

import gymnasium as gym
import pytest
from PIL import Image

from pyvision_env import PyVisionEnv, Task, TaskSet
from pyvision_env.execution import CellStatus, ForkError, SandboxConfig
from pyvision_env.vector import PyVisionVectorEnv
from pyvision_env.wrappers import RecordEpisodes, read_episodes

from .conftest import quiet_engine


@pytest.fixture(scope="module", params=["fork", "exec"])
def engine(request):
    eng = quiet_engine(spare_kernels=2, sandbox=SandboxConfig(start_method=request.param))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fork-tasks")
    Image.new("RGB", (64, 48), "blue").save(folder / "blue.png")
    return TaskSet("fork", [Task(id="blue", question="What colour?", answer="blue", grader="exact",
                                 images=(str(folder / "blue.png"),))])


def test_a_forked_session_has_the_same_state_and_then_its_own(engine, tmp_path):
    Image.new("RGB", (10, 10), "red").save(tmp_path / "red.png")
    with engine.session(images={"picture": tmp_path / "red.png"}, values={"n": 3}) as original:
        for cell in ("import random\nvalues = np.random.rand(3) * n\ndraw = random.random()",
                     "open('notes.txt', 'w').write('kept')\nopen('/tmp/scratch', 'w').write('also kept')",
                     "log = open('log.txt', 'w')\nlog.write('first line\\n')",
                     "import threading, time\nticker = threading.Thread(target=time.sleep, args=(60,), daemon=True)\n"
                     "ticker.start()",
                     "print(values.sum())"):
            assert original.run(cell).ok
        with original.fork() as fork:
            probe = ("print(json.dumps([values.tolist(), draw, np.random.rand(), random.random(), "
                     "open('notes.txt').read(), open('/tmp/scratch').read(), log.tell(), ticker.is_alive(), "
                     "picture.size, n]))")
            assert json.loads(fork.run(probe).stdout) == json.loads(original.run(probe).stdout)
            assert fork.seed == original.seed
            assert (fork.cells_run, fork.images_shown) == (original.cells_run, original.images_shown) == (6, 0)
            assert fork.kernel_pid != original.kernel_pid
            fork.run("n = 100\nopen('notes.txt', 'w').write('changed')")
            assert original.run("print(n, open('notes.txt').read())").stdout == "3 kept\n"
            assert fork.run("print(n, open('notes.txt').read())").stdout == "100 changed\n"


def test_a_fork_replays_only_what_the_current_kernel_ran(engine):
    with engine.session() as original:
        original.run("x = 1")
        crash = original.run("import os\nos._exit(1)")
        assert crash.status is CellStatus.CRASHED and crash.state_lost
        original.run("y = 2")
        with original.fork() as fork:
            assert fork.run("print('x' in dir(), y)").stdout == "False 2\n"


def test_a_replay_that_ends_otherwise_is_refused(engine):
    with engine.session() as original:
        where = original.run("import os\nprint(os.getcwd())").stdout.strip()
        assert original.run(f"assert os.getcwd() == {where!r}").ok  # each kernel has its own directory
        with pytest.raises(ForkError, match="cell 2 of 2 ended error when replayed, ok originally"):
            original.fork()
        assert original.run("print('still fine')").stdout == "still fine\n"


def test_a_forked_environment_is_at_the_same_point(engine, tasks):
    env = PyVisionEnv(tasks, engine=engine)
    try:
        env.reset(options={"task_id": "blue"})
        show = env.protocol.render_action(code="small = image_clue_0.resize((8, 6))\ndisplay(small)")
        _, _, _, _, info = env.step(show)
        fork = env.fork()
        try:
            assert fork.conversation() == env.conversation() and len(env.conversation()) == 4  # system, user, response, tool output
            assert fork.np_random.random() == env.np_random.random()
            probe = env.protocol.render_action(code="print(small.size)")
            _, _, _, _, fork_info = fork.step(probe)
            _, _, _, _, own_info = env.step(probe)
            for key in ("turn", "tool_calls", "tool_errors", "images_shown", "visual_tokens"):
                assert fork_info[key] == own_info[key] == info[key] + (key in ("turn", "tool_calls")), key
            _, reward, terminated, _, _ = fork.step(fork.protocol.render_action(answer="blue"))
            assert terminated and reward == 1.0
            _, _, _, _, info = env.step(env.protocol.render_action(code="print('the original goes on')"))
            assert info["end_reason"] is None and info["turn"] == 3
        finally:
            fork.close()
    finally:
        env.close()
    with pytest.raises(gym.error.ResetNeeded, match="episode in progress"):
        PyVisionEnv(tasks, engine=engine).fork()


def test_a_wrapper_stack_forks_with_its_own_episode_state(engine, tasks, tmp_path):
    env = gym.make("PyVision/Zoom-v0", reward="accumulative", engine=engine)
    recorded = RecordEpisodes(PyVisionEnv(tasks, engine=engine), tmp_path / "runs")
    try:
        env.reset(seed=0)
        unwrapped = env.unwrapped
        env.step(unwrapped.protocol.render_action(code="x = 1"))
        fork = env.get_wrapper_attr("fork")()
        try:
            _, _, terminated, _, fork_info = fork.step(unwrapped.protocol.render_action(answer="no idea"))
            _, _, _, _, own_info = env.step(unwrapped.protocol.render_action(code="y = 2"))
            assert terminated and "episode" in fork_info and "episode" not in own_info
            assert fork_info["episode"]["tool_calls"] == 1 and own_info["tool_calls"] == 2
        finally:
            fork.close()

        recorded.reset(options={"task_id": "blue"})
        recorded.step(recorded.unwrapped.protocol.render_action(code="x = 1"))
        branch = recorded.fork()
        branch.step(branch.unwrapped.protocol.render_action(answer="blue"))
        recorded.step(recorded.unwrapped.protocol.render_action(answer="red"))
        branch.close()
    finally:
        env.close()
        recorded.close()
    episodes = read_episodes(tmp_path / "runs")
    assert len(episodes) == 2
    right, wrong = sorted(episodes, key=lambda episode: not episode["totals"]["correct"])
    assert right["totals"]["correct"] and not wrong["totals"]["correct"]
    assert right["forked_from"] == wrong["episode_id"] and "forked_from" not in wrong.data
    assert right["messages"][:4] == wrong["messages"][:4] and right["messages"][4:] != wrong["messages"][4:]


def test_a_vector_env_branches_one_episode_into_many(engine, tasks):
    envs = PyVisionVectorEnv(2, tasks, engine=engine)
    try:
        envs.reset(options=[{"task_id": "blue"}, None])  # the second has no episode
        protocol = envs.envs[0].unwrapped.protocol
        envs.step([protocol.render_action(code="base = 10"), None])
        with pytest.raises(gym.error.ResetNeeded, match="sub-environment 1"):
            envs.branch(1, 2)
        branches = envs.branch(0, 3)
        try:
            _, _, _, _, infos = branches.step([protocol.render_action(code=f"base += {i}\nprint(base)")
                                               for i in range(3)])
            assert list(infos["turn"]) == [2, 2, 2] and list(infos["tool_errors"]) == [0, 0, 0]
            outputs = [branches.envs[i].unwrapped.conversation()[-1].plain_text for i in range(3)]
            assert ["10" in outputs[0], "11" in outputs[1], "12" in outputs[2]] == [True] * 3
            _, _, _, _, infos = envs.step([protocol.render_action(code="print(base)"), None])
            assert infos["turn"][0] == 2 and "10" in envs.envs[0].unwrapped.conversation()[-1].plain_text
        finally:
            branches.close()
    finally:
        envs.close()
