"""The README's "Use it in your project" snippets run as they are: every ```python block of that
section is executed, in order, in one namespace (later blocks reuse earlier names)."""
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Use it in your project"


def _section() -> str:
    """The text of the README section, from its heading to the next level-2 heading."""
    text = (ROOT / "README.md").read_text()
    if HEADING not in text:
        raise AssertionError(f"README.md has no section {HEADING!r}")
    body = text.split(HEADING, 1)[1]
    return re.split(r"^## ", body, maxsplit=1, flags=re.M)[0]


def _python_blocks(section: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", section, flags=re.M | re.S)


def test_the_section_has_the_promised_snippets():
    blocks = _python_blocks(_section())
    code = "\n".join(blocks)
    assert len(blocks) >= 5
    for needle in ("mask=", "kd.capture(", "layout=\"channels_last\"", "structured_prune(", "cache_teacher_outputs("):
        assert needle in code, f"no snippet uses {needle}"
    assert "torchrun" in _section() and "--device cuda" in _section()


def test_every_python_block_runs():
    namespace: dict = {"__name__": "readme"}
    state = torch.get_rng_state()   # the snippets seed torch's global generator
    try:
        for i, block in enumerate(_python_blocks(_section())):
            try:
                exec(compile(block, f"README block {i + 1}", "exec"), namespace)
            except Exception as err:   # name the failing block
                pytest.fail(f"README block {i + 1} failed: {type(err).__name__}: {err}\n{block}")
    finally:
        torch.set_rng_state(state)
