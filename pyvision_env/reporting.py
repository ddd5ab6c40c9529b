"""Report pieces every layer writes with: Markdown tables and saved figures.

Example:
    >>> print(markdown_table([{"suite": "zoom", "accuracy": 0.5}], [("suite", "suite", "{}"),
    ...                                                               ("accuracy", "accuracy", "{:.0%}")]))
    | suite | accuracy |
    |---|---:|
    | zoom | 50% |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Column = tuple[str, str, str]
"""``(key, title, format)``: a row's ``key`` shown under ``title`` with ``format.format(value)``; ``"{}"``
columns are text (left-aligned), the others numbers (right-aligned)."""


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """A Markdown table of ``rows``; a missing or ``None`` value is an empty cell."""
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |",
             "|" + "|".join("---" if fmt == "{}" else "---:" for _, _, fmt in columns) + "|"]
    for row in rows:
        cells = ["" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out a matplotlib figure, write it to ``path`` (PNG, 110 dpi), close it and return ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
