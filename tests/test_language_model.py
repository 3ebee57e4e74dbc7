"""The closed language-model contract (``slmzoo.components.LanguageModel``): a language model written against it
alone, in plain torch, works with every fusion, gradient checkpointing, prompting and cached generation; and the
transformers-backed LMs implement its parts exactly (``head(hidden_states(x))`` is their own logits, the contract's
cached decoding loop gives transformers' greedy tokens)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import Field
from torch import nn
from torch.utils.checkpoint import checkpoint

import slmzoo
import slmzoo.plugins
from slmzoo.components import LanguageModel
from slmzoo.registry import ComponentSpec, LanguageModelOptionsBase


class TinyLMOptions(LanguageModelOptionsBase):
    hidden_size: int = Field(32, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    max_positions: int = Field(512, ge=16)


class Attention(nn.Module):
    """Causal multi-head self-attention with a KV cache; Llama's projection names (adapter_prompt reads them)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, hidden_states, mask, cache):
        """``hidden_states [B, L, D]``, ``mask [B, P + L]``, ``cache``: ``(k, v)`` of the ``P`` earlier positions."""
        b, length, _ = hidden_states.shape
        q, k, v = (proj(hidden_states).view(b, length, self.heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        total = k.shape[2]
        causal = torch.ones(length, total, dtype=torch.bool, device=q.device).tril(total - length)
        allowed = causal[None, None] & mask.bool()[:, None, None, :]
        scores = (q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)).masked_fill(~allowed, torch.finfo(q.dtype).min)
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, length, -1)
        return self.o_proj(out), (k, v)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, hidden_states, mask, cache=None):
        attended, cache = self.self_attn(self.norm1(hidden_states), mask, cache)
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.norm2(hidden_states)), cache


class TinyLM(LanguageModel):
    """A decoder-only LM in plain torch, implementing exactly the four abstract parts of the contract."""

    def __init__(self, options, context):
        super().__init__()
        self.processor = context.processor
        self.hidden_size = options.hidden_size
        self.embed_tokens = nn.Embedding(len(self.processor.tokenizer), options.hidden_size)
        self.positions = nn.Embedding(options.max_positions, options.hidden_size)
        self.layers = nn.ModuleList(Block(options.hidden_size, options.num_heads) for _ in range(options.num_layers))
        self.norm = nn.LayerNorm(options.hidden_size)
        self.lm_head = nn.Linear(options.hidden_size, len(self.processor.tokenizer), bias=False)
        self.checkpointing = False

    def input_embeddings(self):
        return self.embed_tokens

    def decoder_layers(self):
        return self.layers

    def hidden_states(self, inputs_embeds, attention_mask, position_ids=None, past_key_values=None, use_cache=False):
        if position_ids is None:
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)[None]
        hidden = inputs_embeds + self.positions(position_ids)
        caches = []
        for i, layer in enumerate(self.layers):
            past = past_key_values[i] if past_key_values is not None else None
            if self.checkpointing and self.training:
                hidden, cache = checkpoint(layer, hidden, attention_mask, past, use_reentrant=False)
            else:
                hidden, cache = layer(hidden, attention_mask, past)
            caches.append(cache)
        return self.norm(hidden), (caches if use_cache else None)

    def head(self, hidden):
        return self.lm_head(hidden)

    def gradient_checkpointing_enable(self) -> bool:
        self.checkpointing = True
        return True


class TinyLMPlugin:
    @staticmethod
    @slmzoo.hookimpl
    def slmzoo_register_components(register):
        register(ComponentSpec(kind="llm", name="tiny_torch_lm", description="a plain-torch LM (tests)",
                               options=TinyLMOptions, factory="tests.test_language_model:TinyLM",
                               example={"hidden_size": 32}))


@pytest.fixture(autouse=True)
def tiny_lm_plugin():
    slmzoo.plugins.register_plugin(TinyLMPlugin, "tiny_lm_plugin")
    yield
    slmzoo.plugins.host().unregister("tiny_lm_plugin")


FUSIONS = {"concat": "{type: concat}", "prefix": "{type: prefix}",
           "cross_attention": "{type: cross_attention, num_layers: 1, num_heads: 4}",
           "bestow": "{type: cross_attention, num_layers: 1, num_heads: 4, self_attention: true}",
           "gated_xattn": "{type: gated_xattn, num_heads: 4}",
           "adapter_prompt": "{type: adapter_prompt, num_layers: 1, prompt_length: 3}"}


def tiny_card(fusion: str, *sets):
    return slmzoo.load_card("salm", preset="tiny", overrides=[
        "llm={type: tiny_torch_lm, hidden_size: 32, num_layers: 2, num_heads: 4}", f"fusion={FUSIONS[fusion]}", *sets])


def waves():
    t = np.arange(16000) / 16000
    return [np.sin(2 * np.pi * 300 * t[:12000]).astype(np.float32), np.sin(2 * np.pi * 500 * t[:7000]).astype(np.float32)]


@pytest.mark.parametrize("fusion", list(FUSIONS))
def test_every_fusion_trains_and_generates_on_the_contract_alone(fusion, one_thread):
    torch.manual_seed(0)
    model = slmzoo.build(tiny_card(fusion))
    assert type(model.llm).__name__ == "TinyLM"
    with torch.no_grad():  # open what starts closed (zero gates, zero residual outputs) so the audio matters
        for name, param in model.fusion.named_parameters():
            if "gate" in name:
                param.fill_(0.5)
            elif param.dim() > 1 and not param.any():
                param.normal_(0.0, 0.02)
    batch = model.prepare_batch(waves(), ["say it", "say it again"], ["one two", "three"])
    out = model(batch)
    assert torch.isfinite(out.loss) and out.num_tokens > 0
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapter.parameters())
    model.eval()
    texts = model.generate(waves(), prompts=["say it", "say it"], max_new_tokens=6)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    # Cached decoding equals decoding from scratch each step (the audio reaches every generated token).
    batch = model.prepare_batch(waves()[:1], ["say it"], padding_side="left")
    embeds, _ = model.encode_audio(batch["audio"], batch["audio_lens"])
    fused = model.fusion.fuse(model.llm, batch["input_ids"], batch["attention_mask"], embeds, padding_side="left")
    cached = model.llm.generate(fused.inputs_embeds, fused.attention_mask, max_new_tokens=5, eos_token_id=[])
    sequence, mask = fused.inputs_embeds, fused.attention_mask
    for step in range(5):
        with torch.no_grad():
            token = model.llm(sequence, mask).logits[:, -1].argmax(-1)
        assert int(token) == int(cached[0, step]), f"step {step}"
        sequence = torch.cat([sequence, model.llm.embed(token[:, None])], dim=1)
        mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
    model.fusion.release()


def test_gradient_checkpointing_gives_the_same_gradients(one_thread):
    torch.manual_seed(0)
    plain = slmzoo.build(tiny_card("gated_xattn"))
    torch.manual_seed(0)
    checkpointed = slmzoo.build(tiny_card("gated_xattn"))
    assert checkpointed.enable_gradient_checkpointing() == ["llm"]
    grads = []
    for model in (plain, checkpointed):
        model.train()
        torch.manual_seed(1)
        model(model.prepare_batch(waves(), None, ["one", "two"])).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_the_contract_kit_passes_a_plain_torch_llm(tmp_path):
    from slmzoo.testing import CHECKS, check_component

    for check in CHECKS:
        check_component("llm", "tiny_torch_lm", check, tmp_path / check)


@pytest.mark.parametrize("card", ["salm", "slm", "speechgpt", "pengi", "granite-speech", "wavllm"])
def test_transformers_llms_implement_the_parts_exactly(card, one_thread):
    """``head(hidden_states(x))`` equals the model's own logits (Granite's logit scaling, T5's decoder scaling
    included); for causal LMs, the contract's own cached decoding loop gives transformers' greedy tokens."""
    torch.manual_seed(0)
    llm = slmzoo.build(slmzoo.load_card(card, preset="tiny")).llm.eval()
    embeds = torch.randn(2, 7, llm.hidden_size)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7])  # left padding, as generation has it
    with torch.no_grad():
        if llm.is_encoder_decoder:
            labels = torch.tensor([[5, 6, 7], [8, 9, -100]])
            hidden, _ = llm.hidden_states(embeds, mask, labels=labels)
            torch.testing.assert_close(llm.head(hidden), llm(embeds, mask, labels=labels).logits)
            return
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden, _ = llm.hidden_states(embeds, mask, position_ids=positions)
        own = llm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False).logits
        torch.testing.assert_close(llm.head(hidden)[mask.bool()], own[mask.bool()], atol=1e-5, rtol=1e-5)
        theirs = llm.generate(embeds, mask, max_new_tokens=6, do_sample=False, eos_token_id=[])
        ours = LanguageModel.generate(llm, embeds, mask, max_new_tokens=6, eos_token_id=[])
    assert torch.equal(ours, theirs[:, -ours.shape[1]:])
