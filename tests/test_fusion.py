"""Fusion schemes: where the audio goes, that the untrained gated fusions equal the text LLM, that padded
audio never changes an output, and that KV-cached generation sees the audio."""

import copy

import numpy as np
import pytest
import torch

from slmzoo.builder import BuildContext
from slmzoo.components import Adapter, AdapterOutput
from slmzoo.model import SpeechLM
from slmzoo.prompting import IGNORE_INDEX, pad_sequences
from slmzoo_plugins.fusion import specs
from slmzoo_plugins.llms.hf_causal import HFCausalLM
from slmzoo_plugins.llms.specs import HFCausalOptions
from tests.conftest import FrameEncoder

TINY_LLAMA = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)

FUSIONS = {
    "concat": ("slmzoo_plugins.fusion.concat:ConcatFusion", specs.ConcatOptions()),
    "prefix": ("slmzoo_plugins.fusion.prefix:PrefixFusion", specs.PrefixOptions()),
    "cross_attention": ("slmzoo_plugins.fusion.cross_attention:CrossAttentionFusion",
                        specs.CrossAttentionOptions(num_heads=4)),
    "bestow": ("slmzoo_plugins.fusion.cross_attention:CrossAttentionFusion",
               specs.CrossAttentionOptions(num_heads=4, self_attention=True)),
    "gated_xattn": ("slmzoo_plugins.fusion.gated_xattn:GatedCrossAttentionFusion",
                    specs.GatedXAttnOptions(num_heads=4)),
    "gated_xattn_outputs": ("slmzoo_plugins.fusion.gated_xattn:GatedCrossAttentionFusion",
                            specs.GatedXAttnOptions(num_heads=4, zero_init="outputs")),
    "adapter_prompt": ("slmzoo_plugins.fusion.adapter_prompt:AdapterPromptFusion",
                       specs.AdapterPromptOptions(num_layers=1, prompt_length=4)),
}
MEMORY_FUSIONS = ("cross_attention", "gated_xattn", "adapter_prompt")


_PRISTINE = {}


def make_llm(dtype=torch.float64):
    """A fresh copy of one random tiny Llama (copying is much faster than building)."""
    if dtype not in _PRISTINE:
        torch.manual_seed(0)
        llm = HFCausalLM(HFCausalOptions(tokenizer="bytes", config=TINY_LLAMA),
                         BuildContext(card=None, load_weights=False))
        _PRISTINE[dtype] = llm.to(dtype).eval()
    return copy.deepcopy(_PRISTINE[dtype])


def make_fusion(name, llm, trained=True):
    """A fusion on ``llm``; ``trained`` opens it (:func:`open_up`) so the audio matters."""
    import importlib

    path, options = FUSIONS[name]
    module, attr = path.split(":")
    fusion = getattr(importlib.import_module(module), attr)(options, BuildContext(card=None, llm=llm))
    fusion.to(next(llm.parameters()).dtype).eval()
    if trained:
        open_up(fusion)
    return fusion


def open_up(fusion):
    """What training does to a fusion that starts as the text LLM: the tanh gates open, and the zero-initialised
    residual outputs (cross-attention's ``o_proj`` and feed-forward's last Linear) get weights."""
    g = torch.Generator().manual_seed(2)  # its own generator: the global draws of later tests stay the same
    with torch.no_grad():
        for param_name, param in fusion.named_parameters():
            if "gate" in param_name:
                param.fill_(0.7)
            elif param.dim() == 2 and not param.any():
                param.copy_(torch.randn(param.shape, generator=g, dtype=param.dtype) * 0.1)


def text_batch(llm, prompts, side="right", responses=None):
    fmt = llm.formatter
    enc = [fmt.encode(fmt.messages(p), None if responses is None else responses[i]) for i, p in enumerate(prompts)]
    ids = torch.tensor(pad_sequences([e.input_ids for e in enc], llm.tokenizer.pad_token_id, side))
    mask = torch.tensor(pad_sequences([[1] * len(e.input_ids) for e in enc], 0, side))
    labels = torch.tensor(pad_sequences([e.labels for e in enc], IGNORE_INDEX, side))
    return ids, mask, labels


def clips(lengths, dim=64, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, dim, generator=g, dtype=dtype) for n in lengths]


@pytest.fixture(scope="module")
def llm():
    return make_llm()


def fresh(name, trained=True):
    """Memory fusions hook the LLM's modules: each gets an LLM of its own."""
    llm = make_llm()
    return llm, make_fusion(name, llm, trained)


def bare_logits(llm, ids, mask):
    keep = ids != llm.audio_token_id
    ids, mask = ids[keep].view(ids.shape[0], -1), mask[keep].view(ids.shape[0], -1)
    return llm(llm.embed(ids), mask).logits


# -- placement -------------------------------------------------------------------------------------
def test_all_fusions_are_registered():
    from slmzoo.plugins import registry

    assert {"concat", "prefix", "cross_attention", "gated_xattn", "token_space", "adapter_prompt"} <= set(
        registry().names("fusion"))


def test_prefix_puts_audio_before_the_text(llm):
    fusion = make_fusion("prefix", llm)
    ids, mask, labels = text_batch(llm, ["hi", "hello there"], responses=["a", "bc"])
    audio = clips([3, 5])
    fused = fusion.fuse(llm, ids, mask, audio, labels=labels)
    text = llm.embed(ids[0][(ids[0] != llm.audio_token_id) & mask[0].bool()])
    assert torch.equal(fused.inputs_embeds[0, :3], audio[0])
    assert torch.equal(fused.inputs_embeds[0, 3:3 + len(text)], text)
    assert (fused.labels[:, :3] == IGNORE_INDEX).all()
    assert fused.attention_mask.sum(-1).tolist() == [3 + int(mask[0].sum()) - 1, 5 + int(mask[1].sum()) - 1]
    assert torch.equal(fused.labels[1][fused.labels[1] != IGNORE_INDEX], labels[1][labels[1] != IGNORE_INDEX])


@pytest.mark.parametrize("name", MEMORY_FUSIONS)
def test_memory_fusions_remove_the_audio_tags(name):
    llm, fusion = fresh(name)
    ids, mask, labels = text_batch(llm, ["hi", "hello there"], responses=["a", "bc"])
    fused = fusion.fuse(llm, ids, mask, clips([3, 5]), labels=labels)
    assert fused.inputs_embeds.shape[1] == ids.shape[1] - 1
    assert fused.attention_mask.sum().item() == mask.sum().item() - 2
    assert torch.equal(fused.labels[fused.labels != IGNORE_INDEX], labels[labels != IGNORE_INDEX])
    assert fusion.audio.memory.shape == (2, 5, 64) and fusion.audio.mask.sum(-1).tolist() == [3, 5]


# -- the untrained memory fusions are the text LLM -------------------------------------------------
@pytest.mark.parametrize("name", MEMORY_FUSIONS + ("bestow", "gated_xattn_outputs"))
def test_untrained_memory_fusion_gives_the_bare_llm(name):
    """Zero gates (Flamingo, MU-LLaMA) or zero residual outputs (BESTOW's stack): the untrained model is the text
    LLM exactly, a pretrained LLM keeps its own inputs. Training opens it: the gradient reaches the zeroed weights,
    and once they move the audio changes the output."""
    llm, fusion = fresh(name, trained=False)
    ids, mask, labels = text_batch(llm, ["hi", "hello there"], side="left", responses=["ab", "c"])
    expected = bare_logits(llm, ids, mask)
    fused = fusion.fuse(llm, ids, mask, clips([3, 40]), labels=labels, padding_side="left")
    got = llm(fused.inputs_embeds, fused.attention_mask, labels=fused.labels)
    assert torch.equal(got.logits, expected)
    got.loss.backward()
    zeroed = [p for p_name, p in fusion.named_parameters() if not p.any() and ("gate" in p_name or p.dim() == 2)]
    assert zeroed and all(p.grad is not None and p.grad.abs().sum() > 0 for p in zeroed)
    open_up(fusion)
    fused = fusion.fuse(llm, ids, mask, clips([3, 40]), padding_side="left")
    assert not torch.allclose(llm(fused.inputs_embeds, fused.attention_mask).logits, expected)


# -- padded audio never changes an output ----------------------------------------------------------
@pytest.mark.parametrize("name", list(FUSIONS))
def test_batch_composition_never_changes_an_output(name):
    llm, fusion = fresh(name)
    short, long = clips([4, 60])
    # training layout (right padding): the item alone vs batched with a much longer clip and prompt
    ids, mask, labels = text_batch(llm, ["hi", "a much longer instruction"], responses=["ab", "cdef"])
    fused = fusion.fuse(llm, ids[:1], mask[:1], [short], labels=labels[:1])
    alone = llm(fused.inputs_embeds, fused.attention_mask, labels=fused.labels)
    fused = fusion.fuse(llm, ids, mask, [short, long], labels=labels)
    batched = llm(fused.inputs_embeds, fused.attention_mask, labels=fused.labels)
    n = alone.logits.shape[1]
    assert fused.attention_mask[0, n:].sum() == 0
    torch.testing.assert_close(batched.logits[0, :n], alone.logits[0], atol=1e-5, rtol=0)
    # generation layout (left padding): the same greedy tokens
    ids, mask, _ = text_batch(llm, ["hi", "a much longer instruction"], side="left")
    width = int(mask[0].sum())
    fused = fusion.fuse(llm, ids[:1, -width:], mask[:1, -width:], [short], padding_side="left")
    alone = llm.generate(fused.inputs_embeds, fused.attention_mask, max_new_tokens=6, do_sample=False)
    fused = fusion.fuse(llm, ids, mask, [short, long], padding_side="left")
    batched = llm.generate(fused.inputs_embeds, fused.attention_mask, max_new_tokens=6, do_sample=False)
    assert batched[0, :alone.shape[1]].tolist() == alone[0].tolist()


# -- KV-cached generation --------------------------------------------------------------------------
def greedy_without_cache(llm, fused, steps, suppressed=None):
    """Re-run the whole sequence for each new token: the reference for cached decoding. ``[B, steps, V]``.
    ``suppressed [B, steps, V]``: tokens generate could not choose at each step (``min_new_tokens`` keeps the stop
    tokens out); choosing one here would make the two decodings diverge after a near-win of a stop token."""
    embeds, mask, logits = fused.inputs_embeds, fused.attention_mask, []
    for step in range(steps):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits.append(llm(embeds, mask, position_ids=positions).logits[:, -1])
        choice = logits[-1] if suppressed is None else logits[-1].masked_fill(suppressed[:, step], -torch.inf)
        token = choice.argmax(-1, keepdim=True)
        embeds = torch.cat([embeds, llm.embed(token)], 1)  # through the fusion's hooks, as generate does
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
    return torch.stack(logits, 1)


@pytest.mark.parametrize("name", list(FUSIONS))
def test_cached_generation_works_with_beams(name):
    llm, fusion = fresh(name)
    ids, mask, _ = text_batch(llm, ["hi", "hello there"], side="left")
    fused = fusion.fuse(llm, ids, mask, clips([3, 9]), padding_side="left")
    out = llm.generate(fused.inputs_embeds, fused.attention_mask, max_new_tokens=4, do_sample=False,
                       min_new_tokens=4, num_beams=2, num_return_sequences=2)
    assert out.shape == (4, 4)


def test_bestow_cached_generation_equals_a_full_forward_at_every_step():
    """With text self-attention each generated token attends to the prompt and the tokens before it: the logits of
    every cached step equal a full forward over the whole sequence fused again (left-padded prompts)."""
    llm, fusion = fresh("bestow")
    ids, mask, _ = text_batch(llm, ["hi", "hello there"], side="left")
    audio = clips([3, 9])
    fused = fusion.fuse(llm, ids, mask, audio, padding_side="left")
    cached = llm.generate(fused.inputs_embeds, fused.attention_mask, max_new_tokens=5, min_new_tokens=5,
                          do_sample=False, output_logits=True, return_dict_in_generate=True)
    new_tokens = cached.sequences[:, -5:]
    for step in range(5):
        full_ids = torch.cat([ids, new_tokens[:, :step]], 1)
        full_mask = torch.cat([mask, mask.new_ones(mask.shape[0], step)], 1)
        refused = fusion.fuse(llm, full_ids, full_mask, audio, padding_side="left")
        positions = (refused.attention_mask.cumsum(-1) - 1).clamp(min=0)
        expected = llm(refused.inputs_embeds, refused.attention_mask, position_ids=positions).logits[:, -1]
        torch.testing.assert_close(cached.logits[step].to(expected.dtype), expected, atol=1e-5, rtol=0)


def test_bestow_tokens_know_their_place_in_the_text():
    """Without self-attention a token's fused embedding depends on the token and the audio only; with it, on the
    text before it too (the same token after another prefix differs)."""
    audio = clips([5])
    for name, differs in (("cross_attention", False), ("bestow", True)):
        with torch.random.fork_rng():  # the fusions' random init leaves the later tests' draws alone
            llm, fusion = fresh(name)
        out = []
        for prompt in ("ab", "bb"):
            ids, mask, _ = text_batch(llm, [prompt])
            out.append(fusion.fuse(llm, ids, mask, audio).inputs_embeds)
        fusion.release()
        assert not torch.equal(out[0], out[1])
        # the last token (the same template token in both) sees different text before it only with self-attention
        assert torch.allclose(out[0][:, -1], out[1][:, -1]) != differs


@pytest.mark.parametrize("name", MEMORY_FUSIONS)
def test_cached_generation_equals_a_loop_without_cache(name):
    """Every step's logits match: the tokens generated with the KV cache attend to the audio as the prompt did."""
    llm, fusion = fresh(name)
    ids, mask, _ = text_batch(llm, ["hi", "hello there"], side="left")
    fused = fusion.fuse(llm, ids, mask, clips([3, 9]), padding_side="left")
    cached = llm.generate(fused.inputs_embeds, fused.attention_mask, max_new_tokens=6, min_new_tokens=6,
                          do_sample=False, output_logits=True, output_scores=True, return_dict_in_generate=True)
    suppressed = torch.stack(cached.scores, 1).isinf()  # min_new_tokens: no stop token before the 6th
    reference = greedy_without_cache(llm, fused, 6, suppressed)
    torch.testing.assert_close(torch.stack(cached.logits, 1).to(reference.dtype), reference, atol=1e-5, rtol=0)
    assert cached.sequences.tolist() == reference.masked_fill(suppressed, -torch.inf).argmax(-1).tolist()


# -- token_space -----------------------------------------------------------------------------------
class UnitAdapter(Adapter):
    """Stands in for a token-mapping adapter: one unit id per frame, from the frame's first feature."""

    output_dim = 64

    def forward(self, hidden, lengths):
        units = (hidden[..., 0].abs() * 10).long() % 16
        return AdapterOutput(embeds=None, lengths=lengths, units=units)


def test_token_space_trains_only_the_new_rows():
    from slmzoo_plugins.fusion.token_space import TokenSpaceFusion

    llm = make_llm(torch.float32)
    fusion = TokenSpaceFusion(specs.TokenSpaceOptions(num_units=16), BuildContext(card=None, llm=llm))
    llm.requires_grad_(False)  # train.freeze: [llm]
    model = SpeechLM(card=None, encoder=FrameEncoder(), adapter=UnitAdapter(), fusion=fusion, llm=llm)
    waves = [torch.randn(1600), torch.randn(4800)]
    batch = model.prepare_batch(waves, responses=["ab", "c"])
    embeds, _ = model.encode_audio(batch["audio"], batch["audio_lens"])
    assert [e.dtype for e in embeds] == [torch.long] * 2 and [len(e) for e in embeds] == [10, 30]
    model(batch).loss.backward()
    assert all(p.grad is None for p in llm.parameters())
    used = torch.cat(embeds).unique()
    grad_rows = fusion.unit_embeddings.weight.grad.abs().sum(-1) > 0
    assert grad_rows.any() and set(grad_rows.nonzero().flatten().tolist()) <= set(used.tolist())
    # the unit embeddings land exactly where the tag was (concat placement)
    fused = fusion.fuse(llm, batch["input_ids"], batch["attention_mask"], embeds)
    tag = int((batch["input_ids"][0] == llm.audio_token_id).nonzero())
    assert torch.equal(fused.inputs_embeds[0, tag:tag + 10], fusion.unit_embeddings(embeds[0]))
    ids = llm.generate(fused.inputs_embeds, fused.attention_mask, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert ids.shape == (2, 3)
    with pytest.raises(TypeError, match="unit ids"):
        fusion.fuse(llm, batch["input_ids"], batch["attention_mask"], [torch.randn(3, 64), torch.randn(2, 64)])


# -- through a card ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["gated_xattn", "adapter_prompt"])
def test_card_with_memory_fusion_trains_and_generates(name):
    import slmzoo

    model = slmzoo.build(slmzoo.load_card("salm", preset="tiny", overrides=[f"fusion.type={name}",
                                                                            "fusion.num_heads=4"
                                                                            if name == "gated_xattn" else
                                                                            "fusion.prompt_length=3"])).eval()
    waves = [np.random.default_rng(0).standard_normal(8000).astype("float32")]
    out = model(model.prepare_batch(waves, responses=["one"]))
    assert torch.isfinite(out.loss) and out.num_tokens > 0
    assert isinstance(model.generate(waves, max_new_tokens=3)[0], str)


@pytest.mark.parametrize("fusion", ["cross_attention", "gated_xattn", "adapter_prompt"])
def test_generate_releases_the_audio_memory(fusion):
    import slmzoo

    model = slmzoo.build(slmzoo.load_card("salm", preset="tiny", overrides=[f"fusion.type={fusion}"])).eval()
    model.generate([np.zeros(8000, np.float32) + 0.01], max_new_tokens=2)
    assert model.fusion.audio.memory is None and model.fusion.audio.mask is None
