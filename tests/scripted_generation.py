"""A generation backend that forces exact tally responses, for trainer tests that need a known outcome."""

from __future__ import annotations

import re

from trainers.backends import GenerationBackend, Sampled


class ScriptedTallyGeneration(GenerationBackend):
    """Forces exact responses (as TRL's tests do): at the first turn, the tally tool code for the asked colour
    and a wrong guess in turn; after a tool result, the printed number."""

    RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}

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
                color = re.findall(r"How many (\w+) squares", text)[-1]
                response = (f"<code>\n```python\nprint((np.asarray(image_clue_0) == {self.RGB[color]})"
                            ".all(-1).sum() // 64)\n```\n</code>")
            else:
                self.first_turns += 1
                response = "<answer>\\boxed{0}</answer>"
            ids = self.chat.tokenizer(response, add_special_tokens=False)["input_ids"] + [self.chat.end_token_id]
            out.append(Sampled(ids, [0.0] * len(ids), True))
        return out
