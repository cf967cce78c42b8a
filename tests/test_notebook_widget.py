"""The notebook ``notebooks/attention_widget.py`` executes headless in a Jupyter kernel: its
figure is shown inline as a PNG (no pyplot), and the attention widget's synced state holds the
tokens and the ``[L, H, T, T]`` weights of the text, recomputed when the text changes."""
import pathlib

import numpy as np
import pytest

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "attention_widget.py"


def test_widget_notebook_executes(tmp_path):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("anywidget")
    nb = jupytext.read(NOTEBOOK)
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=300, store_widget_state=True,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"], [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 1          # the inline figure
    views = [o["data"]["application/vnd.jupyter.widget-view+json"] for o in outputs
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) == 1
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"][views[0]["model_id"]]
    s = state["state"]
    assert s["text"] == "i am hello hello" and s["tokens"] == ["i", "am", "hello", "hello"]
    w = np.asarray(s["weights"])
    assert w.shape == (1, 1, 4, 4) and s["error"] == ""
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-3)
    assert np.all(np.triu(w[0, 0], 1) == 0)
    assert "weights_shape" in outputs[-1]["data"]["text/plain"]
