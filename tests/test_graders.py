"""Graders and answer extraction, including an LLM judge served on loopback."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from pyvision_env.graders import CallableGrader, extract_boxed, get_grader, normalize, parse_number
from pyvision_env.tasks import Task


def grade(spec, prediction, answer, **task_fields):
    return get_grader(spec)(prediction, Task.minimal(answer=answer, **task_fields))


def test_boxed_extraction_handles_nesting_and_takes_the_last():
    assert extract_boxed(r"\boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{1} then \boxed{2}") == "2"
    assert extract_boxed(r"\boxed{unclosed") is None and extract_boxed("plain") is None


@pytest.mark.parametrize("prediction, answer, correct", [
    ("The Red Sign.", "red sign", True), (r"\boxed{\text{STOP}}", "stop", True), ("stop sign", "stop", False),
    ("an apple", "apple", True),
])
def test_exact_match_normalises(prediction, answer, correct):
    assert grade("exact", prediction, answer).correct is correct


def test_exact_match_accepts_aliases():
    assert grade("exact", "NYC", "New York", metadata={"aliases": ["nyc"]}).correct


@pytest.mark.parametrize("prediction, correct", [
    ("B", True), ("(B)", True), ("B. dog", True), ("Answer: B", True), (r"\boxed{B}", True), ("dog", True),
    ("A", False), ("cat", False), ("Both", False), ("", False),
])
def test_multiple_choice_letters(prediction, correct):
    assert grade("choice", prediction, "B", choices=("cat", "dog")).correct is correct


def test_multiple_choice_answer_given_as_option_text():
    assert grade("choice", "(B)", "dog", choices=("cat", "dog")).correct


@pytest.mark.parametrize("prediction, correct", [
    ("12", True), (r"\boxed{12.0}", True), ("about 1,2", False), ("12 apples", True), ("none", False),
])
def test_numeric(prediction, correct):
    assert grade("numeric", prediction, "12").correct is correct


def test_numeric_tolerance_and_number_parsing():
    assert grade({"name": "numeric", "rel_tol": 0.05}, "104", "100").correct
    assert not grade({"name": "numeric", "rel_tol": 0.01}, "104", "100").correct
    assert parse_number("1,250 px") == 1250 and parse_number("50%") == 50 and parse_number("-3/4") == -0.75
    with pytest.raises(ValueError, match="numeric answer"):
        grade("numeric", "3", "three")


def test_mean_relative_accuracy_matches_the_vsi_bench_definition():
    assert grade("mra", "10", "10").score == 1.0
    assert grade("mra", "100", "10").score == 0.0
    # 8% error passes thresholds 0.50..0.90 (error < 1 - t), i.e. 9 of 10
    assert grade("mra", "10.8", "10").score == pytest.approx(0.9)
    assert grade("mra", "13", "10").score == pytest.approx(0.5) and grade("mra", "13", "10").correct


def test_callable_grader_and_bad_specs():
    lenient = CallableGrader(lambda answer, task: answer.lower().startswith(task.answer.lower()))
    assert lenient("Cats are great", Task.minimal(answer="cat")).correct
    with pytest.raises(ValueError, match="expected a bool or a score"):
        CallableGrader(lambda answer, task: 3)("x", Task.minimal(answer="x"))
    with pytest.raises(ValueError, match="unknown grader"):
        get_grader("fuzzy")
    with pytest.raises(ValueError, match="bad parameters"):
        get_grader({"name": "numeric", "tolerance": 1})
    with pytest.raises(ValueError, match="unknown grader"):
        Task.minimal(answer="1", grader="fuzzy")  # a bad grader fails when the task is made


def test_normalize():
    assert normalize("  The  RED sign! ") == "red sign" and normalize("3.50.") == "3.50"


class _JudgeHandler(BaseHTTPRequestHandler):
    replies: list[str] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _JudgeHandler.seen = body
        payload = json.dumps({"choices": [{"message": {"content": _JudgeHandler.replies.pop(0)}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_llm_judge_over_a_real_http_endpoint():
    server = HTTPServer(("127.0.0.1", 0), _JudgeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        judge = get_grader({"name": "llm-judge", "base_url": f"http://127.0.0.1:{server.server_port}/v1",
                            "model": "judge", "timeout": 5})
        task = Task.minimal(answer="a red stop sign", question="What is it?")
        _JudgeHandler.replies = ["CORRECT", "incorrect.", "maybe"]
        assert judge(r"\boxed{stop sign}", task).correct
        assert "stop sign" in _JudgeHandler.seen["messages"][0]["content"]
        assert not judge("a tree", task).correct
        with pytest.raises(RuntimeError, match="expected CORRECT or INCORRECT"):
            judge("?", task)
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(RuntimeError, match=r"LLM judge .* failed"):
        judge("x", task)  # the server is gone
