"""The real default embedder loads offline from its package and embeds meaningfully."""

from __future__ import annotations

import numpy as np
import pytest

from retriever.embedder import load_embedder


@pytest.mark.slow
def test_default_embedder_loads_offline_and_ranks_related_text_higher() -> None:
    emb = load_embedder()
    assert emb.resolved.source == "package" and emb.dim == 384
    vecs = emb.encode(
        [
            "How do I install a package with apt?",
            "Use apt-get install NAME to install a Debian package.",
            "The weather in Paris is mild in spring.",
        ]
    )
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.2
    assert emb.identity["name"] == "all-MiniLM-L6-v2" and len(emb.identity["weights"]) == 16
