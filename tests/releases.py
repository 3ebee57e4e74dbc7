"""Tiny random releases in the layout the Hugging Face Hub holds them, built offline.

A release folder here is what ``save_pretrained`` of transformers' own classes writes: ``config.json``,
``generation_config.json``, sharded safetensors with ``model.safetensors.index.json`` (in transformers' legacy
layout by default, as the Hub holds it, or v5's renamed one), the processor's ``preprocessor_config.json`` and a
real BPE tokenizer trained here with ``tokenizers`` (its special tokens those of the release).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

#: Text the tiny tokenizers learn their merges from (the prompts the tests use, and some more).
CORPUS = [
    "What does the speaker say? Describe it. Detect the language and recognize the speech.",
    "You are a helpful assistant. Transcribe the input speech. Answer the question in the audio.",
    "system user assistant Audio 1: the quick brown fox jumps over the lazy dog 0123456789",
] * 4


def train_tokenizer(specials: list[str], eos: str, pad: str, vocab_size: int = 360, bos: str | None = None):
    """A byte-level BPE tokenizer trained on :data:`CORPUS`, ``specials`` first (ids 0, 1, ...) and special."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=eos, pad_token=pad, bos_token=bos)


def shard_and_save(model, folder: Path, layout: str = "legacy", shard_size: str = "150KB") -> Path:
    """``model.save_pretrained`` in shards with an index: the legacy layout (what transformers writes by default
    and the Hub holds) or ``v5`` (transformers 5's renamed module names)."""
    model.save_pretrained(folder, max_shard_size=shard_size, save_original_format=layout == "legacy")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded, as released
    return folder


def save_processor_files(folder: Path, feature_extractor, tokenizer, chat_template: str | None = None) -> None:
    """The processor's files as the Hub holds them (transformers 4.x wrote them one by one):
    ``preprocessor_config.json``, the tokenizer's, and ``chat_template.json`` when the release ships one."""
    feature_extractor.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if chat_template is not None:
        (folder / "chat_template.json").write_text(json.dumps({"chat_template": chat_template}))


def weight_names(folder: Path) -> list[str]:
    return sorted(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"])


def tiny_qwen2(vocab_size: int, stops: list[int], rms_norm_eps: float) -> dict:
    """A 2-layer Qwen2 text config; ``stops``: end of turn, then end of text (also BOS and padding)."""
    return {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": vocab_size,
            "max_position_embeddings": 2048, "rms_norm_eps": rms_norm_eps, "tie_word_embeddings": False,
            "bos_token_id": stops[1], "eos_token_id": stops[0], "pad_token_id": stops[1]}


# -- Qwen2-Audio ------------------------------------------------------------------------------------------
QWEN2_AUDIO_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]


def qwen2_audio_release(folder: Path, layout: str = "legacy", chat_template: bool = False):
    """A tiny Qwen2-Audio-7B-Instruct: ``(folder, reference model, reference processor)``. Like the Hub's main
    branch the folder ships no ``chat_template`` unless ``chat_template`` (then the processor's own is saved)."""
    import transformers as tf

    torch.manual_seed(0)
    tokenizer = train_tokenizer(QWEN2_AUDIO_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>")
    stops = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    config = tf.Qwen2AudioConfig(
        audio_config={"d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
                      "num_mel_bins": 128, "max_source_positions": 1500},
        text_config=tiny_qwen2(len(tokenizer) + 8, stops, rms_norm_eps=1e-5),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"))
    model = tf.Qwen2AudioForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = stops
    model.generation_config.pad_token_id = stops[1]
    shard_and_save(model, folder, layout)
    save_processor_files(folder, tf.WhisperFeatureExtractor(feature_size=128), tokenizer,
                         tf.Qwen2AudioProcessor.default_chat_template.fget(None) if chat_template else None)
    return folder, model, tf.Qwen2AudioProcessor.from_pretrained(folder)


# -- Voxtral ------------------------------------------------------------------------------------------------
#: Voxtral's control tokens: mistral-common's v7 order; [AUDIO] at 24 as VoxtralProcessor hard-codes it.
TEKKEN_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                   "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
                   "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
                   "[ARGS]", "[CALL_ID]", "<SPECIAL_22>", "<SPECIAL_23>", "[AUDIO]", "[BEGIN_AUDIO]", "[TRANSCRIBE]"]


def tiny_tekken(file: Path, vocab: int = 600, num_special: int = 40) -> int:
    """A tekken.json: the first ``vocab`` merges of mistral-common's own tekken vocabulary (a real tiktoken BPE,
    truncated), Voxtral's special tokens and audio settings. Returns the vocabulary size."""
    import mistral_common

    source = json.loads((Path(mistral_common.__file__).parent / "data" / "tekken_240911.json").read_text())
    data = {"config": {**source["config"], "num_vocab_tokens": vocab, "default_vocab_size": vocab + num_special,
                       "default_num_special_tokens": num_special, "version": "v7"},
            "vocab": source["vocab"][:vocab],
            "special_tokens": [{"rank": i, "token_str": t, "is_control": True} for i, t in enumerate(TEKKEN_SPECIALS)],
            "audio": {"sampling_rate": 16000, "frame_rate": 12.5, "chunk_length_s": 30.0,
                      "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400}}}
    file.write_text(json.dumps(data))
    return vocab + num_special


def voxtral_release(folder: Path, layout: str = "legacy"):
    """A tiny Voxtral Mini: ``(folder, reference model, reference processor)``; the tokenizer is mistral-common's
    (``tekken.json``), the processor transformers' VoxtralProcessor over it."""
    import transformers as tf

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = tiny_tekken(folder / "tekken.json")
    config = tf.VoxtralConfig(
        audio_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128,
                      "num_mel_bins": 128, "max_source_positions": 1500},
        text_config={"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "vocab_size": vocab_size,
                     "max_position_embeddings": 4096, "rope_theta": 1e8, "rms_norm_eps": 1e-5,
                     "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 11},
        audio_token_id=24, projector_hidden_act="gelu")
    model = tf.VoxtralForConditionalGeneration(config).eval()
    model.generation_config.update(bos_token_id=1, eos_token_id=2, pad_token_id=11)
    shard_and_save(model, folder, layout)
    extractor = tf.WhisperFeatureExtractor(feature_size=128)
    extractor.save_pretrained(folder)
    processor = tf.VoxtralProcessor(feature_extractor=extractor,
                                    tokenizer=tf.MistralCommonBackend.from_pretrained(folder))
    return folder, model, processor


# -- Granite Speech ---------------------------------------------------------------------------------------------
GRANITE_SPECIALS = ["<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>", "<|audio|>"]
#: Granite 3.3's template, its default system prompt with a pinned date.
GRANITE_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set system = 'Knowledge Cutoff Date: April 2024.\\n"
    "Today\\'s Date: December 1, 2026.\\nYou are Granite, developed by IBM. You are a helpful AI assistant.' %}"
    "{%- set loop_messages = messages %}{%- endif %}"
    "<|start_of_role|>system<|end_of_role|>{{ system }}<|end_of_text|>\n"
    "{% for m in loop_messages %}<|start_of_role|>{{ m['role'] }}<|end_of_role|>{{ m['content'] }}<|end_of_text|>\n"
    "{% endfor %}{%- if add_generation_prompt %}<|start_of_role|>assistant<|end_of_role|>{%- endif %}"
)
GRANITE_MELS = {"sample_rate": 16000, "n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 16}


def granite_speech_release(folder: Path, layout: str = "legacy", rank: int = 4, alpha: float = 8.0):
    """A tiny Granite Speech 3.3 with its LoRA (peft's adapter files, q_proj and v_proj, random A and B):
    ``(folder, reference, tokenizer)``. The reference has the LoRA merged into its weights, which is what
    transformers computes with the adapter enabled (peft >= 0.22, which transformers needs for adapters, is not
    installable here)."""
    import transformers as tf
    from safetensors.torch import save_file

    torch.manual_seed(0)
    tokenizer = train_tokenizer(GRANITE_SPECIALS, eos="<|end_of_text|>", pad="<|end_of_text|>")
    tokenizer.chat_template = GRANITE_TEMPLATE
    end = tokenizer.convert_tokens_to_ids("<|end_of_text|>")
    config = tf.GraniteSpeechConfig(
        encoder_config=dict(input_dim=32, num_layers=2, hidden_dim=32, num_heads=2, dim_head=16, feedforward_mult=2,
                            output_dim=12, context_size=8, max_pos_emb=16, conv_kernel_size=5,
                            conv_expansion_factor=2, dropout=0.0),
        projector_config=dict(model_type="blip_2_qformer", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=64, encoder_hidden_size=32),
        text_config=dict(model_type="granite", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, vocab_size=len(tokenizer) + 4,
                         tie_word_embeddings=True, embedding_multiplier=12.0, logits_scaling=16.0,
                         residual_multiplier=0.22, attention_multiplier=0.0625, bos_token_id=end, eos_token_id=end,
                         pad_token_id=end),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|audio|>"), has_lora_adapter=True,
        window_size=15, downsample_rate=5)
    model = tf.GraniteSpeechForConditionalGeneration(config).eval()
    for name, buffer in model.model.encoder.named_buffers():  # BatchNorm statistics other than the init's 0 / 1
        if "running" in name:
            buffer.uniform_(0.5, 1.5)
    model.generation_config.update(eos_token_id=end, pad_token_id=end)
    shard_and_save(model, folder, layout, shard_size="100KB")
    lora = {}
    for i, layer in enumerate(model.model.language_model.layers):
        for target in ("q_proj", "v_proj"):
            linear = getattr(layer.self_attn, target)
            a, b = torch.randn(rank, linear.in_features) * 0.1, torch.randn(linear.out_features, rank) * 0.1
            key = f"base_model.model.language_model.model.layers.{i}.self_attn.{target}"
            lora[f"{key}.lora_A.weight"], lora[f"{key}.lora_B.weight"] = a, b
            with torch.no_grad():  # the reference computes with the adapter on: W + (alpha / r) B A
                linear.weight += alpha / rank * b @ a
    save_file(lora, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none",
        "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": str(folder), "task_type": None}))
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "GraniteSpeechFeatureExtractor", "sampling_rate": 16000,
        "melspec_kwargs": GRANITE_MELS, "projector_window_size": 15, "projector_downsample_rate": 5}))
    return folder, model, tokenizer


# -- Audio Flamingo 3 -------------------------------------------------------------------------------------------
AF3_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<sound>"]
#: A chatml template with the audio as <sound> before the text (a stand-in: the -hf release's own file was not read).
AF3_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'audio' %}<sound>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def audio_flamingo_3_release(folder: Path, layout: str = "legacy", max_audio_len: int | None = None):
    """A tiny Audio Flamingo 3 (-hf layout), its chat template in ``chat_template.jinja``:
    ``(folder, reference, reference processor)``. ``max_audio_len`` (seconds): the processor's cap, saved as
    transformers 5 saves a processor (``processor_config.json``)."""
    import transformers as tf

    torch.manual_seed(0)
    tokenizer = train_tokenizer(AF3_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>")
    stops = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    config = tf.AudioFlamingo3Config(
        audio_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                      "num_mel_bins": 128, "max_source_positions": 1500},
        text_config=tiny_qwen2(len(tokenizer) + 8, stops, rms_norm_eps=1e-6),
        audio_token_id=tokenizer.convert_tokens_to_ids("<sound>"), projector_hidden_act="gelu")
    model = tf.AudioFlamingo3ForConditionalGeneration(config).eval()
    model.generation_config.update(eos_token_id=stops, pad_token_id=stops[1])
    shard_and_save(model, folder, layout)
    save_processor_files(folder, tf.WhisperFeatureExtractor(feature_size=128), tokenizer)
    (folder / "chat_template.jinja").write_text(AF3_TEMPLATE)
    cap = {} if max_audio_len is None else {"max_audio_len": max_audio_len}
    processor = tf.AudioFlamingo3Processor(feature_extractor=tf.WhisperFeatureExtractor.from_pretrained(folder),
                                           tokenizer=tokenizer, chat_template=AF3_TEMPLATE, **cap)
    if cap:
        processor.save_pretrained(folder)
    return folder, model, processor


# -- canary-qwen (NeMo SALM) ------------------------------------------------------------------------------------
#: ParakeetEncoder names -> NeMo ConformerEncoder names (the inverse of nemo_checkpoint's table; relative_k_proj first).
PARAKEET_TO_NEMO = [(r"^subsampling\.layers\.", "pre_encode.conv."), (r"^subsampling\.linear\.", "pre_encode.out."),
                    (r"^encode_positions\.", "pos_enc."), (r"\.conv\.norm\.", ".conv.batch_norm."),
                    (r"relative_k_proj\b", "linear_pos"), (r"\b([kv])_proj\b", r"linear_\1"),
                    (r"\bo_proj\b", "linear_out"), (r"\bq_proj\b", "linear_q"), (r"\bbias_([uv])\b", r"pos_bias_\1")]


def canary_qwen_release(folder: Path, llm_folder: Path):
    """A synthetic canary-qwen checkpoint with NeMo's names and config layout (as read from NeMo's code):
    ``(folder, parts)`` with the parts it was made of (``encoder`` ParakeetEncoder, ``proj``, ``llm`` peft-wrapped
    Qwen3 with unmerged LoRA, ``fb``/``window`` the stored bf16 filterbank, ``tokenizer``)."""
    import re

    import transformers as tf
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers.audio_utils import mel_filter_bank

    torch.manual_seed(0)
    tokenizer = train_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], eos="<|im_end|>",
                                pad="<|endoftext|>")
    qwen3 = tf.Qwen3ForCausalLM(tf.Qwen3Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        intermediate_size=128, vocab_size=len(tokenizer) + 8, max_position_embeddings=2048, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)).eval()
    qwen3.config.save_pretrained(llm_folder)  # what NeMo reads of pretrained_llm: its config and tokenizer
    tokenizer.save_pretrained(llm_folder)
    lora = {"task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
            "target_modules": ["q_proj", "v_proj"]}
    llm = get_peft_model(qwen3, LoraConfig(**lora, init_lora_weights=False)).eval()
    encoder = tf.ParakeetEncoder(tf.ParakeetEncoderConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, conv_kernel_size=9,
        subsampling_factor=8, subsampling_conv_channels=16, num_mel_bins=80, dropout=0.0, dropout_positions=0.0,
        attention_dropout=0.0, layerdrop=0.0)).eval()
    for name, buffer in encoder.named_buffers():
        if "running" in name:
            buffer.uniform_(0.5, 1.5)
    proj = torch.nn.Linear(32, 64)
    filters = torch.from_numpy(mel_filter_bank(num_frequency_bins=257, num_mel_filters=80, min_frequency=0.0,
                                               max_frequency=8000.0, sampling_rate=16000, norm="slaney",
                                               mel_scale="slaney")).float().T
    fb = (filters * (1 + 0.05 * torch.randn(filters.shape))).bfloat16()[None]  # [1, n_mels, n_freq], not recomputable
    window = torch.hann_window(400, periodic=False).bfloat16()
    state = {"perception.preprocessor.featurizer.fb": fb, "perception.preprocessor.featurizer.window": window}
    for name, tensor in encoder.state_dict().items():
        for pattern, replacement in PARAKEET_TO_NEMO:
            name = re.sub(pattern, replacement, name)
        state[f"perception.encoder.{name}"] = tensor
    state["perception.encoder.pos_enc.pe"] = torch.zeros(1, 9, 32)  # NeMo's positional table (a buffer)
    state.update({f"perception.proj.{k}": v for k, v in proj.state_dict().items()})
    for name, tensor in llm.state_dict().items():
        if name.endswith("lm_head.weight"):
            continue  # tied to embed_tokens
        if name.endswith("model.embed_tokens.weight"):
            state["embed_tokens.weight"] = tensor  # SALM moves the embeddings out of the LLM
        else:
            state[f"llm.{name}"] = tensor
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    config = {
        "pretrained_llm": str(llm_folder), "pretrained_asr": "nvidia/canary-1b-flash", "pretrained_weights": False,
        "audio_locator_tag": "<|audioplaceholder|>", "prompt_format": "qwen", "lora": lora,
        "freeze_params": [r"^llm\..+$", r"^embed_tokens\..+$"],
        "perception": {
            "target": "nemo.collections.speechlm2.modules.perception.AudioPerceptionModule", "output_dim": 64,
            "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                             "sample_rate": 16000, "normalize": "per_feature", "window_size": 0.025,
                             "window_stride": 0.01, "window": "hann", "features": 80, "n_fft": 512, "log": True,
                             "frame_splicing": 1, "dither": 1e-5, "pad_to": 0, "pad_value": 0.0},
            "encoder": {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": 80, "n_layers": 2,
                        "d_model": 32, "n_heads": 2, "ff_expansion_factor": 4, "subsampling": "dw_striding",
                        "subsampling_factor": 8, "subsampling_conv_channels": 16, "self_attention_model": "rel_pos",
                        "conv_kernel_size": 9, "xscaling": True, "use_bias": True, "dropout": 0.0,
                        "dropout_emb": 0.0, "dropout_att": 0.0},
            "modality_adapter": {"_target_": "nemo.collections.speechlm2.modules.perception.IdentityConnector",
                                 "d_model": 32},
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder, {"encoder": encoder, "proj": proj, "llm": llm, "fb": fb, "window": window, "tokenizer": tokenizer}


# -- Ultravox -----------------------------------------------------------------------------------------------------
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"]
LLAMA3_TEMPLATE = (
    "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def ultravox_release(folder: Path, llm_folder: Path):
    """A synthetic Ultravox v0.5 release (config keys and tensor names as fixie-ai/ultravox's code writes them) and
    its ``text_model_id``, a tiny Llama in ``llm_folder``: ``(folder, parts)``."""
    import transformers as tf
    from safetensors.torch import save_file
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(0)
    tokenizer = train_tokenizer(LLAMA3_SPECIALS, eos="<|eot_id|>", pad="<|end_of_text|>")
    tokenizer.chat_template = LLAMA3_TEMPLATE
    llm = tf.LlamaForCausalLM(tf.LlamaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
        vocab_size=len(tokenizer) + 8, max_position_embeddings=2048, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)).eval()
    llm.save_pretrained(llm_folder)
    tokenizer.save_pretrained(llm_folder)
    audio = {"d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
             "num_mel_bins": 128, "max_source_positions": 1500, "decoder_layers": 1, "decoder_attention_heads": 2,
             "decoder_ffn_dim": 64}
    tower = WhisperEncoder(tf.WhisperConfig(**audio)).eval()
    stack, hidden = 8, 64
    projector = {"ln_pre.weight": 1 + 0.1 * torch.randn(stack * 32),
                 "linear_1.weight": torch.randn(hidden, stack * 32) * 0.05,
                 "ln_mid.weight": 1 + 0.1 * torch.randn(hidden // 2),
                 "linear_2.weight": torch.randn(64, hidden // 2) * 0.1}
    state = {f"audio_tower.{k}": v for k, v in tower.state_dict().items()}
    state.update({f"multi_modal_projector.{k}": v for k, v in projector.items()})
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["UltravoxModel"], "model_type": "ultravox", "audio_model_id": "openai/whisper-large-v3-turbo",
        "text_model_id": str(llm_folder), "stack_factor": stack, "projector_act": "swiglu", "projector_ln_mid": True,
        "hidden_size": hidden, "audio_config": {"model_type": "whisper", **audio},
        "text_config": {"model_type": "llama", "dtype": "float32"}}))
    return folder, {"tower": tower, "projector": projector, "llm": llm, "tokenizer": tokenizer}
