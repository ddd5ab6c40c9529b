"""Generation backends that force exact tally responses, for trainer tests that need a known outcome."""

from __future__ import annotations

import re

from trainers.backends import GenerationBackend, Sampled

RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def count_code(color: str) -> str:
    """The tool call that prints how many ``color`` squares a tally image holds."""
    return f"<code>\n```python\nprint((np.asarray(image_clue_0) == {RGB[color]}).all(-1).sum() // 64)\n```\n</code>"


class ScriptedTallyGeneration(GenerationBackend):
    """Forces exact responses (as TRL's tests do): at the first turn, the tally tool code for the asked colour
    and a wrong guess in turn; after a tool result, the printed number."""

    def __init__(self, chat):
        self.chat, self.first_turns = chat, 0

    def generate(self, prompts, sampling):
        out = []
        for prompt in prompts:
            text = self.chat.tokenizer.decode(prompt.ids, skip_special_tokens=True)
            result = re.findall(r"Text Result:\s*(\d+)", text)
            if result:
                response = f"<answer>\\boxed{{{result[-1]}}}</answer>"
            elif self.first_turns % 2 == 0:
                self.first_turns += 1
                response = count_code(re.findall(r"How many (\w+) squares", text)[-1])
            else:
                self.first_turns += 1
                response = "<answer>\\boxed{0}</answer>"
            out.append(_sampled(self.chat, response))
        return out


class ThinkThenCount(GenerationBackend):
    """Forces responses that think, then call the tool: a first turn writes :attr:`THINKING` and code that prints 0
    (a wrong count, as tally answers are 1 to 9); a response whose start was replayed (AXPO's prefix resampling)
    goes on with the code that counts; after a tool result, the printed number is answered."""

    THINKING = "I will count the squares.\n"

    def __init__(self, chat):
        self.chat = chat

    def generate(self, prompts, sampling):
        out = []
        for prompt in prompts:
            text = self.chat.tokenizer.decode(prompt.ids)  # special tokens kept: where the response starts shows
            started = text.rsplit("<|im_start|>assistant\n", 1)[-1]
            result = re.findall(r"Text Result:\s*(\d+)", text)
            if started:
                color = re.findall(r"How many (\w+) squares", text)[-1]
                response = (self.THINKING + count_code(color)).removeprefix(started)
            elif result:
                response = f"<answer>\\boxed{{{result[-1]}}}</answer>"
            else:
                response = self.THINKING + "<code>\n```python\nprint(0)\n```\n</code>"
            out.append(_sampled(self.chat, response))
        return out


def _sampled(chat, response: str) -> Sampled:
    ids = chat.tokenizer(response, add_special_tokens=False)["input_ids"] + [chat.end_token_id]
    return Sampled(ids, [0.0] * len(ids), True)
