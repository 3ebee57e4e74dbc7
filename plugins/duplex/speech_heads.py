"""``parallel``: NeMo DuplexS2SModel's speech head (``duplex_s2s_model.py`` 67-84).

K embedding tables of ``V + 3`` rows (one per codebook, summed into the LLM input) and one
``Linear(H, K * (V + 3))`` predicting every codebook of the frame at once: no depth transformer, no delay between
codebooks.
"""

from __future__ import annotations

import torch
from torch import nn

from slmzoo_plugins.duplex.components import SpeechHead


class ParallelSpeechHead(SpeechHead):
    def __init__(self, options, context):
        super().__init__()
        vocabulary = context.extra.get("speech_vocabulary")
        if vocabulary is None or context.llm_dim is None:
            raise ValueError("speech_head parallel: needs a codec (its codebooks) and an llm (its width) built first")
        self.vocabulary = vocabulary
        self.embeddings = nn.ModuleList(nn.Embedding(vocabulary.size, context.llm_dim)
                                        for _ in range(vocabulary.num_codebooks))
        self.proj = nn.Linear(context.llm_dim, vocabulary.num_codebooks * vocabulary.size)
        self.output_dim = context.llm_dim

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes [B, T, K]`` -> ``[B, T, H]``, summed codebook by codebook in order (NeMo's addition order)."""
        total = self.embeddings[0](codes[..., 0])
        for k in range(1, len(self.embeddings)):
            total = total + self.embeddings[k](codes[..., k])
        return total

    def forward(self, hidden: torch.Tensor, previous_codes: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden [B, T, H]`` -> ``[B, T, K, V + 3]``; the previous codes already reached the LLM input."""
        logits = self.proj(hidden)
        return logits.view(*hidden.shape[:-1], self.vocabulary.num_codebooks, self.vocabulary.size)
