"""hf_causal: inline configs, local pretrained folders (weights and tokenizer), LoRA, clear errors."""

import pytest
import torch
import yaml

import slmzoo
from slmzoo.tokenizer import byte_level_tokenizer
from tests.conftest import speechlike

TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "num_key_value_heads": 1, "intermediate_size": 64, "max_position_embeddings": 512}


def _card(tmp_path, llm: dict, name="c"):
    data = {"name": name, "extends": "salm", "llm": {"type": "hf_causal", **llm}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def saved_llm(tmp_path):
    """A tiny Llama and its tokenizer saved with save_pretrained, as a hub download would look."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = byte_level_tokenizer(["<|im_start|>", "<|im_end|>"])
    fields = dict(TINY_LLAMA)
    config = AutoConfig.for_model(fields.pop("model_type"), vocab_size=len(tok) + 5, **fields)
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config)
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, model


def test_loads_weights_and_tokenizer_from_a_local_folder(tmp_path, saved_llm):
    folder, reference = saved_llm
    card = slmzoo.load_card(_card(tmp_path, {"pretrained": str(folder)}), preset="tiny",
                            overrides=[f"llm.pretrained={folder}", "llm.tokenizer=null", "llm.config=null", "llm.lora=null"])
    model = slmzoo.build(card)
    loaded = model.llm.model.state_dict()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(loaded[name], tensor), name
    # the audio tag was added as one special token; the template markers were already there
    tok = model.tokenizer
    assert tok.convert_tokens_to_ids("<|audioplaceholder|>") == len(tok) - 1
    assert tok("<|im_start|>", add_special_tokens=False).input_ids == [tok.convert_tokens_to_ids("<|im_start|>")]
    texts = model.generate([torch.randn(8000) * 0.1], prompts=["Transcribe the audio."], max_new_tokens=3)
    assert isinstance(texts[0], str)


def test_saved_model_with_folder_tokenizer_round_trips(tmp_path, saved_llm):
    folder, _ = saved_llm
    card = slmzoo.load_card("salm", preset="tiny",
                            overrides=[f"llm.pretrained={folder}", "llm.tokenizer=null", "llm.config=null"])
    model = slmzoo.build(card).eval()
    clip = torch.randn(12000) * 0.1
    before = model.generate([clip], prompts=["hi"], max_new_tokens=5)
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "tokenizer").is_dir()
    folder.rename(tmp_path / "gone")  # the checkpoint must not need the original folder any more
    again = slmzoo.from_pretrained(tmp_path / "saved")
    assert again.generate([clip], prompts=["hi"], max_new_tokens=5) == before


def test_lora_from_the_card(tmp_path):
    card = slmzoo.load_card("salm", preset="tiny", overrides=["llm.lora.r=4", "llm.lora.target_modules=[q_proj, o_proj]"])
    model = slmzoo.build(card)
    lora = [n for n, p in model.llm.named_parameters() if "lora_" in n]
    assert any("q_proj.lora_A" in n for n in lora) and any("o_proj.lora_B" in n for n in lora)
    assert all(p.requires_grad for n, p in model.llm.named_parameters() if "lora_" in n)
    assert model.llm.model.peft_config["default"].r == 4


def test_lora_target_that_does_not_exist_is_named(tmp_path):
    card = slmzoo.load_card("salm", preset="tiny", overrides=["llm.lora.target_modules=[query]"])
    with pytest.raises(ValueError, match="llm.lora.target_modules: no module named query .*q_proj"):
        slmzoo.build(card)


def test_unreachable_pretrained_says_what_to_do():
    card = slmzoo.load_card("salm", preset="tiny", overrides=["llm.pretrained=/nonexistent/llm", "llm.tokenizer=bytes"])
    with pytest.raises(RuntimeError, match="cannot load '/nonexistent/llm'.*--meta"):
        slmzoo.build(card)


def test_config_without_model_type_is_refused():
    card = slmzoo.load_card("salm", preset="tiny", overrides=["llm.config={hidden_size: 8}"])
    with pytest.raises(RuntimeError, match="needs model_type"):
        slmzoo.build(card)


def test_input_past_a_learned_position_table_is_named():
    """GPT-2 (pengi) has a table of learned positions: an input past its end says so, not "index out of range"."""
    from slmzoo.errors import SequenceTooLongError

    model = slmzoo.build(slmzoo.load_card("pengi", preset="tiny", overrides=["llm.config.n_positions=24"]))
    batch = model.prepare_batch([speechlike(2.0)], None, ["one two three"])
    named = r"over the 24 learned positions of this gpt2 \(llm.config.n_positions\)"
    with pytest.raises(SequenceTooLongError, match=named):
        model(batch)
    with pytest.raises(SequenceTooLongError, match="the prompt is"):
        model.generate([speechlike(2.0)], max_new_tokens=4)


def test_generation_stops_at_the_end_of_a_learned_position_table():
    """The prompt fits, the asked-for answer would not: generation is cut where the table ends (no IndexError)."""
    model = slmzoo.build(slmzoo.load_card("pengi", preset="tiny"))
    model.eval()
    clip = speechlike(1.0)
    out = model.generate([clip], max_new_tokens=1000)  # 256 positions in the tiny GPT-2
    assert isinstance(out[0], str)
