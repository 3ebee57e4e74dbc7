"""``hf_seq2seq``: the fused prompt feeds a T5 encoder, the response is the decoder's target."""


import numpy as np
import pytest
import torch

from slmzoo.builder import BuildContext
from slmzoo.components import Adapter, AdapterOutput
from slmzoo.model import SpeechLM, split_prompt_response
from slmzoo_plugins.fusion.concat import ConcatFusion
from slmzoo_plugins.llms.hf_seq2seq import HFSeq2SeqLM
from slmzoo_plugins.llms.specs import HFSeq2SeqOptions, LoraOptions
from tests.conftest import FrameEncoder

TINY_T5 = dict(model_type="t5", d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4, dropout_rate=0.0)


class LinearAdapter(Adapter):
    output_dim = 64

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 64)

    def forward(self, hidden, lengths):
        return AdapterOutput(self.proj(hidden), lengths)


def make_llm(**options):
    torch.manual_seed(0)
    return HFSeq2SeqLM(HFSeq2SeqOptions(**{"tokenizer": "bytes", "config": TINY_T5, **options}),
                       BuildContext(card=None, load_weights=False))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SpeechLM(card=None, encoder=FrameEncoder(), adapter=LinearAdapter(), fusion=ConcatFusion(),
                    llm=make_llm()).double().eval()


def waves(*seconds):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(int(s * 16000)).astype("float32") for s in seconds]


def test_plain_format_and_decoder_start():
    llm = make_llm()
    assert llm.is_encoder_decoder and llm.hidden_size == 64
    assert llm.base.config.decoder_start_token_id == llm.tokenizer.pad_token_id
    assert llm.formatter.end_of_turn == "<|endoftext|>"
    text = llm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                             add_generation_prompt=True)
    assert text == "hi\n"


def test_split_prompt_response():
    ids = torch.tensor([[5, 6, 7, 8, 0], [5, 9, 10, 11, 12]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, -100, -100, 11, 12]])
    prompt, prompt_mask, response = split_prompt_response(ids, mask, labels, pad_id=0)
    assert prompt.tolist() == [[5, 6, 0], [5, 9, 10]] and prompt_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert response.tolist() == [[7, 8], [11, 12]]


def test_forward_puts_the_response_on_the_decoder(model):
    batch = model.prepare_batch(waves(0.3, 0.5), responses=["one two", "three"])
    out = model(batch)
    assert torch.isfinite(out.loss)
    assert out.num_tokens == len("one two") + len("three") + 2  # + end of turn each
    assert out.logits.shape[:2] == (2, len("one two") + 1)
    out.loss.backward()
    assert model.adapter.proj.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_generate_returns_text(model):
    texts = model.generate(waves(0.3, 0.5), max_new_tokens=5)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    llm = model.llm
    ids, mask, embeds = _prompt(model, waves(0.3))
    fused = model.fusion.fuse(llm, ids, mask, embeds, padding_side="left")
    ids = llm.generate(fused.inputs_embeds, fused.attention_mask, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert ids.shape == (1, 4)  # the decoder start token is not returned


def _prompt(model, audio):
    batch = model.prepare_batch(audio, padding_side="left")
    embeds, _ = model.encode_audio(batch["audio"].double(), batch["audio_lens"])
    return batch["input_ids"], batch["attention_mask"], embeds


def test_batch_composition_never_changes_an_output(model):
    short, long = waves(0.3, 2.0)
    alone = model(model.prepare_batch([short], prompts=["hi"], responses=["abc"]))
    batched = model(model.prepare_batch([short, long], prompts=["hi", "a much longer instruction"],
                                        responses=["abc", "defghij"]))
    n = alone.logits.shape[1]
    torch.testing.assert_close(batched.logits[0, :n], alone.logits[0], atol=1e-5, rtol=0)
    assert model.generate([short], max_new_tokens=6) == model.generate([short, long], max_new_tokens=6)[:1]


def test_memory_fusion_fuses_only_the_encoder_input():
    from slmzoo_plugins.fusion.cross_attention import CrossAttentionFusion
    from slmzoo_plugins.fusion.specs import CrossAttentionOptions

    llm = make_llm().eval()
    fusion = CrossAttentionFusion(CrossAttentionOptions(num_heads=4), BuildContext(card=None, llm=llm)).eval()
    with torch.no_grad():  # the blocks start as the identity (zero residual outputs): open them
        for param in fusion.parameters():
            if param.dim() > 1 and not param.any():
                param.normal_(0.0, 0.02)
    ids = llm.tokenizer(["hi " + llm.formatter.audio_tag], return_tensors="pt").input_ids
    fused = fusion.fuse(llm, ids, torch.ones_like(ids), [torch.randn(5, 64)])
    plain = llm.embed(ids[:, :-1])
    assert torch.equal(plain, llm.model.get_input_embeddings()(ids[:, :-1]))  # the decoder's embeddings: untouched
    assert not torch.allclose(fused.inputs_embeds, plain)
    out = llm(fused.inputs_embeds, fused.attention_mask, labels=torch.tensor([[104, 105]]))
    assert torch.isfinite(out.loss)
    assert llm.generate(fused.inputs_embeds, fused.attention_mask, max_new_tokens=3).shape[0] == 1


def test_lora_names_t5_projections():
    llm = make_llm(lora=LoraOptions(target_modules=["q", "v"]))
    assert any("lora_A" in name for name, _ in llm.named_parameters())
    with pytest.raises(Exception, match="no module named q_proj"):
        make_llm(lora=LoraOptions())


@pytest.mark.slow
def test_card_with_seq2seq_llm():
    import slmzoo

    model = slmzoo.build(slmzoo.load_card("salm", preset="tiny", overrides=[
        "llm.type=hf_seq2seq", "llm.tokenizer=bytes",
        "llm.config={model_type: t5, d_model: 64, d_ff: 128, d_kv: 16, num_layers: 2, num_heads: 4}",
        "prompt.chat_template=plain"])).eval()
    out = model(model.prepare_batch(waves(0.5), responses=["one"]))
    assert torch.isfinite(out.loss) and out.num_tokens == 4
    assert isinstance(model.generate(waves(0.5), max_new_tokens=3)[0], str)


@pytest.mark.parametrize("model_type", ["t5", "mt5"])
def test_random_t5_starts_with_logits_of_unit_scale(model_type):
    """transformers 5 ties mT5's head to its embeddings without T5's ``d_model ** -0.5`` output rescaling; at T5's
    std-1.0 embedding init a random mT5 starts with logits of std ``sqrt(d_model)`` (the tiny slm: loss 54 at step
    10) and text embeddings far above an adapter's output. T5 itself rescales and keeps its init."""
    llm = make_llm(config={**TINY_T5, "model_type": model_type})
    embeddings = llm.base.get_input_embeddings().weight
    expected = 1.0 if model_type == "t5" else 64 ** -0.5
    assert embeddings.std().item() == pytest.approx(expected, rel=0.1)
    with torch.no_grad():
        logits = llm.head(torch.nn.functional.normalize(torch.randn(256, 64), dim=-1) * 8)  # unit-RMS states
    assert 0.5 < logits.std().item() < 2.0
