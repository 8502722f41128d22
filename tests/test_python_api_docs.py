"""docs/python-api.md runs: its ```python blocks are executed in order, in one namespace, as one script.

The blocks end in ``assert`` lines about what they computed; this test adds a few checks of its own on the
namespace they leave, so that deleting an assert from the page does not let it go stale unnoticed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import advkit.registry

PAGE = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"
SECTIONS = (
    "Train and evaluate",
    "Load a run",
    "Attacks in a plain script",
    "Components defined in a script or notebook",
)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def test_the_page_has_its_sections_each_with_code():
    text = PAGE.read_text(encoding="utf-8")
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    sections = dict(zip(parts[1::2], parts[2::2], strict=True))
    for title in SECTIONS:
        assert title in sections, f"docs/python-api.md lacks the section '## {title}'"
        assert python_blocks(sections[title]), f"section '{title}' has no ```python block"


def test_the_pages_code_runs_and_its_results_hold(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the page writes runs/ relative to the working directory
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(advkit.registry, "_DEFAULT", None)  # the page's registrations stay out of other tests
    torch.set_num_threads(1)
    namespace: dict = {"__name__": "__main__"}  # what a script's own classes are defined in
    blocks = python_blocks(PAGE.read_text(encoding="utf-8"))
    for number, block in enumerate(blocks, start=1):
        exec(compile(block, f"{PAGE.name}, python block {number}", "exec"), namespace)

    report, resumed = namespace["report"], namespace["resumed"]
    assert set(report["accuracy"]) == {"clean", "pgd:steps=5", "torchattacks:FGSM"}
    assert all(0.0 <= value <= 1.0 for value in report["accuracy"].values())
    with torch.no_grad():
        assert torch.allclose(namespace["model"](namespace["probe"]), namespace["expected"])
    assert resumed.rectifier.calls > 0 and namespace["UniformNoise"].batches > 0  # the script's components ran
    record = (tmp_path / "runs" / "digits-smoothed" / "config.yaml").read_text()
    assert "rectifier: counted-smoothing" in record and "class: __main__:CountedSmoothing" in record
    with pytest.raises(advkit.PluginError, match="unknown attack 'uniform-noise'"):  # the with block ended
        advkit.load_component("attack", "uniform-noise")


def test_the_pages_resume_message_is_the_one_advkit_prints():
    """The page quotes the refusal of a resume without the script's class; keep the quote true."""
    from advkit.registry import Registry
    from advkit.train import RUNTIME_KEY, _check_registered_again

    page = PAGE.read_text(encoding="utf-8")
    text = " ".join(page.split("```text\n", 1)[1].split("```", 1)[0].split())
    quoted = text.removeprefix("advkit: error: ")
    registered = {"rectifier": {"name": "counted-smoothing", "class": "__main__:CountedSmoothing"}}
    with pytest.raises(advkit.PluginError) as info:
        _check_registered_again(registered, Registry([]), Path("runs/digits-smoothed"))
    assert " ".join(str(info.value).split()) == quoted
    assert f"`software: {RUNTIME_KEY}:`" in page  # where the page says config.yaml records the class
