import os
import pathlib
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

#: Where the tests look for Tiny Shakespeare: $JAXFORMER_SHAKESPEARE (the variable the library
#: reads too), else the sibling folder ../shared/data/ of this repository. Only the
#: ``shakespeare_path`` fixture below uses it; tests without the file are skipped.
SHAKESPEARE = pathlib.Path(os.environ.get("JAXFORMER_SHAKESPEARE") or
                           pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt")


def randomize(params, seed=0, scale=0.3):
    """Replace every leaf with random values (norm scales around 1), so that zero biases and
    unit scales cannot hide a bug."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        name = str(path[-1])
        vals = rng.normal(0.0, scale, leaf.shape).astype(np.float32)
        if "scale" in name:
            vals = 1.0 + vals
        out.append(jax.numpy.asarray(vals))
    return jax.tree_util.tree_unflatten(treedef, out)


@pytest.fixture
def shakespeare_path():
    """The Tiny Shakespeare text file (see ``SHAKESPEARE``); skips the test when it is absent."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"Tiny Shakespeare not found at {SHAKESPEARE} (set JAXFORMER_SHAKESPEARE)")
    return SHAKESPEARE
