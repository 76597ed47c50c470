"""examples/quickstart.ipynb runs top to bottom in a fresh kernel (its own local Ray and service)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"


def _outputs(cell) -> str:
    text = []
    for output in cell.get("outputs", []):
        text.append(output.get("text", ""))
        for value in (output.get("data") or {}).values():
            text.append(value if isinstance(value, str) else "")
    return "\n".join(text)


def test_quickstart_notebook_executes(ray_head, monkeypatch):
    """On the test session's second cluster: a new local Ray in the kernel would find the
    dashboard agent's fixed port (52365) taken by the session's own Ray."""
    for name, value in ray_head.client_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RAY_ADDRESS", ray_head.gcs_address)
    notebook = nbformat.read(REPO / "examples" / "quickstart.ipynb", as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO / "examples")}}
    )
    try:
        client.execute()
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        nbformat.write(notebook, ARTIFACTS / "quickstart.executed.ipynb")
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    score_cell = next(cell for cell in code if cell.source.startswith("score = job.result()"))
    data = score_cell.outputs[-1]["data"]
    assert "image/svg+xml" in data or "text/html" in data
    rendered = data.get("text/html") or data["image/svg+xml"]
    assert "<svg" in rendered and rendered.count('class="note"') > 20
    batch_cell = next(cell for cell in code if "client.batch(" in cell.source)
    out = _outputs(batch_cell)
    assert "2 completed, 0 failed, 0 skipped" in out and "completed" in out
    assert "<svg" in _outputs(code[-2])  # the batch entry's Score renders too
