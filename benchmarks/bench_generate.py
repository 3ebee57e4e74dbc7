"""Greedy generation of an imported release: slmzoo ``generate`` against transformers' ``generate`` of the reference
class, the same model, batch and prompts, in one run. Offline: a random Qwen2-Audio release (~100M parameters by
default) built with transformers' own class and saved as the Hub holds it, then imported.

    python benchmarks/bench_generate.py [--size mid|small] [--batch B] [--seconds S] [--new-tokens N]
                                        [--repeats R] [--device cpu|cuda] [--dtype float32|bfloat16]

Prints tokens per second of each side (median of R runs after a warm-up, the sides taking turns; every row decodes
exactly N tokens: ``min_new_tokens`` keeps both sides from stopping early), the ratio, RTFx (audio seconds per
second of generation), and the share of greedy tokens both sides agree on.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

SIZES = {  # Qwen2-Audio's architecture at sizes a CPU runs: (audio tower, text model)
    "mid": (dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048),
            dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                 intermediate_size=2048)),
    "small": (dict(d_model=128, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=512),
              dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=512)),
}
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
PROMPT = "What does the speaker say?"


def make_release(folder: Path, size: str, dtype: torch.dtype):
    """A random Qwen2-Audio release in ``folder`` (sharded safetensors, tokenizer, feature extractor):
    ``(reference model, reference processor)``."""
    import transformers as tf

    from slmzoo.tokenizer import byte_level_tokenizer

    torch.manual_seed(0)
    tokenizer = byte_level_tokenizer(SPECIALS)
    audio, text = SIZES[size]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = tf.Qwen2AudioConfig(
        audio_config={**audio, "num_mel_bins": 128, "max_source_positions": 1500},
        text_config={"model_type": "qwen2", **text, "vocab_size": len(tokenizer), "max_position_embeddings": 4096,
                     "tie_word_embeddings": False, "eos_token_id": eos, "pad_token_id": tokenizer.pad_token_id},
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"))
    model = tf.Qwen2AudioForConditionalGeneration(config).to(dtype).eval()
    model.generation_config.update(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder, max_shard_size="200MB")
    tokenizer.save_pretrained(folder)
    tf.WhisperFeatureExtractor(feature_size=128).save_pretrained(folder)
    return model, tf.Qwen2AudioProcessor.from_pretrained(folder)


def timed(fns: dict, repeats: int, device: torch.device) -> dict[str, tuple[float, torch.Tensor]]:
    """Median seconds of each ``fns[name]()`` over ``repeats`` runs after one warm-up, and its last result. The
    sides take turns, so a machine shared with other jobs slows both alike."""
    times, results = {name: [] for name in fns}, {}
    for i in range(repeats + 1):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            results[name] = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), results[name]) for name in fns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="mid")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0, help="clip lengths spread over [seconds/2, seconds]")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args()

    import slmzoo

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        reference, processor = make_release(Path(tmp), args.size, dtype)
        ours = slmzoo.from_pretrained(tmp).to(device)  # the release imported on the fly
    reference.to(device)
    generator = torch.Generator().manual_seed(1)
    lengths = torch.linspace(args.seconds / 2, args.seconds, args.batch)
    clips = [torch.randn(int(s * 16000), generator=generator) * 0.1 for s in lengths]
    chat = [{"role": "user", "content": [{"type": "audio", "audio_url": "clip"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text] * args.batch, audio=[c.numpy() for c in clips], sampling_rate=16000,
                       return_tensors="pt", padding=True, padding_side="left")
    inputs = {k: v.to(device) for k, v in inputs.items() if k != "num_audio_tokens"}
    inputs["input_features"] = inputs["input_features"].to(dtype)
    n = args.new_tokens
    greedy = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False)

    with torch.inference_mode():
        runs = timed({"transformers": lambda: reference.generate(**inputs, **greedy),
                      "slmzoo": lambda: ours.generate_ids(clips, prompts=[PROMPT] * args.batch, **greedy)},
                     args.repeats, device)
    (theirs_s, theirs), (ours_s, mine) = runs["transformers"], runs["slmzoo"]
    theirs = theirs[:, inputs["input_ids"].shape[1]:].cpu()
    agree = (theirs == mine.cpu()).float().mean().item()
    params = sum(p.numel() for p in ours.parameters())
    audio_seconds = float(lengths.sum())
    threads = torch.get_num_threads() if device.type == "cpu" else None
    print(f"Qwen2-Audio random {args.size} ({params / 1e6:.0f}M parameters), {args.device} {args.dtype}"
          + (f", {threads} threads" if threads else "") + f", batch {args.batch}, {lengths[0]:.1f}-{lengths[-1]:.1f} s"
          f" clips, {n} new tokens, median of {args.repeats}")
    print(f"{'':<14}{'tokens/s':>10}{'RTFx':>8}")
    for name, seconds in (("transformers", theirs_s), ("slmzoo", ours_s)):
        print(f"{name:<14}{args.batch * n / seconds:>10.1f}{audio_seconds / seconds:>8.1f}")
    print(f"ratio slmzoo / transformers: {theirs_s / ours_s:.2f}x; greedy tokens agreeing: {agree:.1%}")


if __name__ == "__main__":
    main()
