"""``SpeechLM``: encoder -> adapter -> fusion -> LLM, built from a card.

``forward(batch)`` returns the loss over response tokens only; ``generate`` decodes in batches with the
LLM's KV cache. Padded audio never reaches the LLM: the encoder masks it, the adapter drops it, and the
fusion takes each clip's valid embeddings only, so an output never depends on its batch companions.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from slmzoo.audio import as_waveform, pad_waveforms
from slmzoo.card.loader import ResolvedCard, dump_yaml
from slmzoo.components import Standalone
from slmzoo.prompting import IGNORE_INDEX, check_audio_count, pad_sequences

COMPONENTS = ("encoder", "adapter", "fusion", "llm")
WEIGHTS_FILE, CARD_FILE, INFO_FILE, TOKENIZER_DIR = "model.safetensors", "card.yaml", "slmzoo.json", "tokenizer"


class TrainPolicyError(ValueError):
    pass


@dataclass
class SpeechLMOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor | None
    num_tokens: int  # response tokens the loss is averaged over
    aux_loss: torch.Tensor | None = None


class SpeechLM(nn.Module):
    def __init__(self, card: ResolvedCard, encoder, adapter, fusion, llm):
        super().__init__()
        self.card = card
        self.encoder, self.adapter, self.fusion, self.llm = encoder, adapter, fusion, llm

    # -- conveniences ------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.llm.tokenizer

    @property
    def formatter(self):
        return self.llm.formatter

    @property
    def sampling_rate(self) -> int:
        return self.encoder.sampling_rate

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def audio_tokens_per_second(self) -> float | None:
        """Audio embeddings reaching the LLM per second of audio (``None``: a fixed number per clip)."""
        return self.adapter.output_frame_rate(self.encoder.frame_rate)

    # -- the pipeline ------------------------------------------------------------------------------
    def encode_audio(self, audio: torch.Tensor, audio_lens: torch.Tensor) -> tuple[list[torch.Tensor], Any]:
        """``audio [N, S]``, ``audio_lens [N]`` -> one ``[T_i, D]`` tensor of valid embeddings per clip
        (``[T_i]`` unit ids for a token-mapping adapter: the fusion embeds them)."""
        encoded = self.encoder(audio, audio_lens)
        adapted = self.adapter(encoded.hidden, encoded.lengths)
        rows = adapted.units if adapted.embeds is None else adapted.embeds
        embeds = [rows[i, : int(n)] for i, n in enumerate(adapted.lengths)]
        return embeds, adapted

    def forward(self, batch: dict[str, torch.Tensor]) -> SpeechLMOutput:
        """``batch``: ``audio [N, S]``, ``audio_lens [N]``, ``input_ids [B, L]`` (one audio tag per clip,
        in order), ``attention_mask [B, L]``, ``labels [B, L]`` (-100 on prompt tokens)."""
        embeds, adapted = self.encode_audio(batch["audio"], batch["audio_lens"])
        input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch.get("labels")
        if getattr(self.llm, "is_encoder_decoder", False):  # the prompt feeds the encoder, the response the decoder
            input_ids, attention_mask, labels = split_prompt_response(input_ids, attention_mask, labels,
                                                                      self.tokenizer.pad_token_id)
            fused = self.fusion.fuse(self.llm, input_ids, attention_mask, embeds, padding_side="right")
            fused.labels = labels
        else:
            fused = self.fusion.fuse(self.llm, input_ids, attention_mask, embeds, labels=labels, padding_side="right")
        out = self.llm(fused.inputs_embeds, fused.attention_mask, labels=fused.labels, **fused.extra)
        loss, aux_loss = out.loss, adapted.aux_loss
        auxiliary = getattr(self.adapter, "auxiliary_loss", None)  # duck-typed adapters may not define it
        if auxiliary is not None and labels is not None and len(embeds) == labels.shape[0]:
            extra_loss = auxiliary(self._response_ids(labels))
            if extra_loss is not None:
                aux_loss = extra_loss if aux_loss is None else aux_loss + extra_loss
        if aux_loss is not None and loss is not None:
            loss = loss + aux_loss
        shift = 0 if getattr(self.llm, "is_encoder_decoder", False) else 1  # causal LMs predict token t from t-1
        num_tokens = int((fused.labels[:, shift:] != IGNORE_INDEX).sum()) if fused.labels is not None else 0
        return SpeechLMOutput(loss=loss, logits=out.logits, num_tokens=num_tokens, aux_loss=aux_loss)

    def _response_ids(self, labels: torch.Tensor) -> list[torch.Tensor]:
        """Each row's response token ids ``[S_i]`` from ``labels [B, L]``, without end-of-turn tokens."""
        stops = torch.tensor(self.formatter.stop_token_ids, device=labels.device)
        return [row[(row != IGNORE_INDEX) & ~torch.isin(row, stops)] for row in labels]

    # -- batches from raw inputs -------------------------------------------------------------------
    def prepare_batch(self, audio: Sequence, prompts: Sequence | None = None, responses: Sequence[str] | None = None,
                      sampling_rate: int | None = None, padding_side: str = "right") -> dict[str, Any]:
        """Tokenize prompts (and responses, for training) and load audio into a model batch.

        ``audio[i]`` is a waveform / path, or a list of them for a prompt with several audio tags.
        ``prompts[i]`` is text, a chat (list of ``{"role", "content"}``), or None for the default task.
        """
        n = len(audio)
        prompts = list(prompts) if prompts is not None else [None] * n
        if len(prompts) != n or (responses is not None and len(responses) != n):
            raise ValueError(f"got {n} audio items, {len(prompts)} prompts"
                             + (f" and {len(responses)} responses" if responses is not None else ""))
        groups = [list(a) if isinstance(a, (list, tuple)) else [a] for a in audio]
        encoded = []
        for i, (prompt, clips) in enumerate(zip(prompts, groups)):
            messages = self.formatter.messages(prompt, num_audio=len(clips))
            encoded.append(self.formatter.encode(messages, None if responses is None else responses[i]))
        check_audio_count(encoded, [len(g) for g in groups])
        waves = [as_waveform(clip, self.sampling_rate, sampling_rate, name=f"audio[{i}]")
                 for i, g in enumerate(groups) for clip in g]
        audio_t, audio_lens = pad_waveforms(waves)
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.tensor(pad_sequences([e.input_ids for e in encoded], pad_id, padding_side))
        attention_mask = torch.tensor(pad_sequences([[1] * len(e.input_ids) for e in encoded], 0, padding_side))
        batch = {"audio": audio_t, "audio_lens": audio_lens, "input_ids": input_ids, "attention_mask": attention_mask}
        if responses is not None:
            batch["labels"] = torch.tensor(pad_sequences([e.labels for e in encoded], IGNORE_INDEX, padding_side))
        return batch

    @torch.no_grad()
    def generate(self, audio: Sequence, sampling_rate: int | None = None, prompts: Sequence | None = None,
                 max_new_tokens: int = 128, **generation_kwargs) -> list[str]:
        """Decode text for each audio item (greedy by default; transformers sampling options work)."""
        if not isinstance(audio, (list, tuple)):
            audio = [audio]
        batch = self.prepare_batch(audio, prompts, sampling_rate=sampling_rate, padding_side="left")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        embeds, _ = self.encode_audio(batch["audio"].to(self._float_dtype()), batch["audio_lens"])
        fused = self.fusion.fuse(self.llm, batch["input_ids"], batch["attention_mask"], embeds, padding_side="left")
        generation_kwargs.setdefault("do_sample", False)
        try:
            ids = self.llm.generate(fused.inputs_embeds, fused.attention_mask, max_new_tokens=max_new_tokens,
                                    **fused.extra, **generation_kwargs)
        finally:
            release = getattr(self.fusion, "release", None)
            if release is not None:
                release()  # a later bare LLM call must not still see this batch's audio
        return self.decode(ids)

    def decode(self, ids: torch.Tensor) -> list[str]:
        stops = set(self.formatter.stop_token_ids)
        texts = []
        for row in ids.tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            texts.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
        return texts

    def _float_dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype

    # -- what is trained -------------------------------------------------------------------------
    def apply_train_policy(self) -> None:
        """Freeze what ``train.freeze`` names, then unfreeze ``train.trainable`` globs.

        Entries are component names (``encoder``, ``adapter``, ``fusion``, ``llm``) or globs over
        parameter names. Freezing a component keeps its LoRA weights trainable (NeMo SALM: frozen LLM +
        LoRA); a glob that matches nothing is an error, not a warning.
        """
        train = self.card.card.train
        params = dict(self.named_parameters())
        for entry in train.freeze:
            names = self._match(entry, params, "train.freeze")
            for name in names:
                if entry in COMPONENTS and "lora_" in name:
                    continue
                params[name].requires_grad_(False)
        for entry in train.trainable:
            for name in self._match(entry, params, "train.trainable"):
                params[name].requires_grad_(True)

    @staticmethod
    def _match(entry: str, params: dict[str, nn.Parameter], key: str) -> list[str]:
        if entry in COMPONENTS:
            names = [n for n in params if n.startswith(entry + ".")]
        else:
            names = [n for n in params if fnmatch.fnmatchcase(n, entry)]
        if not names:
            sample = ", ".join(list(params)[:3])
            raise TrainPolicyError(f"{key}: {entry!r} matches no parameter (use a component name "
                                   f"{', '.join(COMPONENTS)} or a glob over names like {sample})")
        return names

    def summary(self) -> list[dict[str, Any]]:
        """One row per component: type, parameters, trainable parameters, output width and frame rate."""
        rows = []
        rate = self.encoder.frame_rate
        for section in COMPONENTS:
            module = getattr(self, section)
            params = list(module.parameters())
            if section == "encoder":
                dim, fps = module.output_dim, rate
            elif section == "adapter":
                dim, fps = getattr(module, "output_dim", None), module.output_frame_rate(rate)
            elif section == "llm":
                dim, fps = module.hidden_size, None
            else:
                dim, fps = None, None
            rows.append({"component": section, "type": self.card.data[section]["type"],
                         "params": sum(p.numel() for p in params),
                         "trainable": sum(p.numel() for p in params if p.requires_grad),
                         "output_dim": dim, "frames_per_second": fps})
        return rows

    def num_parameters(self, trainable_only: bool = False) -> int:
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) in seen or (trainable_only and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    # -- saving and loading ----------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, trainable_only: bool = False) -> Path:
        """Write ``model.safetensors``, the resolved ``card.yaml``, ``slmzoo.json`` and tokenizer files."""
        from slmzoo.checkpoint import save_weights, versions

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        keys = None
        if trainable_only:
            keys = {n for n, p in self.named_parameters() if p.requires_grad}
        save_weights(self, directory / WEIGHTS_FILE, keys=keys)
        card, sources = self._self_contained_card(trainable_only)
        (directory / CARD_FILE).write_text(dump_yaml(card), encoding="utf-8")
        info = {"format": 1, "trainable_only": trainable_only, "preset": self.card.preset, "versions": versions()}
        if sources:
            info["sources"] = sources  # where the backbones came from; the save no longer needs them
        (directory / INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
        if not _is_builtin_tokenizer(self.card):
            self.tokenizer.save_pretrained(directory / TOKENIZER_DIR)
        return directory

    def _self_contained_card(self, trainable_only: bool) -> tuple[dict, dict[str, str | list[str]]]:
        """The resolved card and the ``pretrained`` sources a full save no longer needs.

        A full save has every weight, so it must rebuild without the original folder, file or hub: each
        component that names a source and can stand alone (:meth:`Standalone.standalone_options`) gets its
        inline config and source-derived settings written into the card, and its ``pretrained`` cleared.
        """
        data = json.loads(json.dumps(self.card.data))
        sources = {}
        if trainable_only:
            return data, sources
        for section in COMPONENTS:
            block, component = data[section], getattr(self, section)
            if not _sources(block):
                continue
            standalone = component.standalone_options() if isinstance(component, Standalone) else None
            if standalone is None:
                continue
            sources[section] = block["pretrained"] if block.get("pretrained") else _sources(block)
            block.update(json.loads(json.dumps(standalone)))  # plain YAML types (tuples become lists)
            if block.get("pretrained"):
                block["pretrained"] = None
        return data, sources

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device | None = None) -> "SpeechLM":
        """Load what ``save_pretrained`` wrote; strict: a missing or unexpected tensor is an error naming it."""
        import yaml

        from slmzoo.builder import build
        from slmzoo.card.loader import load_resolved
        from slmzoo.checkpoint import load_weights

        directory = Path(directory)
        card_file = directory / CARD_FILE
        if not card_file.is_file():
            raise FileNotFoundError(f"{directory}: not a saved slmzoo model (no {CARD_FILE})")
        info = json.loads((directory / INFO_FILE).read_text()) if (directory / INFO_FILE).is_file() else {}
        data = yaml.safe_load(card_file.read_text(encoding="utf-8"))
        if (directory / TOKENIZER_DIR).is_dir():
            data["llm"]["tokenizer"] = str(directory / TOKENIZER_DIR)
        card = load_resolved(data, source=str(card_file))
        card.preset = info.get("preset")
        trainable_only = bool(info.get("trainable_only"))
        model = build(card, load_weights=trainable_only)
        load_weights(model, directory / WEIGHTS_FILE, strict=not trainable_only)
        if device is not None:
            model.to(device)
        return model.eval()


def _sources(block) -> list[str]:
    """The ``pretrained`` sources a card block names, its own and those of blocks nested in it (``multi``)."""
    if isinstance(block, dict):
        own = [block["pretrained"]] if block.get("pretrained") else []
        return own + [source for value in block.values() for source in _sources(value)]
    if isinstance(block, list):
        return [source for value in block for source in _sources(value)]
    return []


def split_prompt_response(input_ids, attention_mask, labels, pad_id: int):
    """A causal-layout batch (``labels [B, L]`` set on the response only) -> the encoder's prompt
    (``input_ids``, ``attention_mask``, right-padded) and the decoder's ``labels [B, N]`` (-100 padded)."""
    valid = attention_mask.bool()
    response = valid & (labels != IGNORE_INDEX) if labels is not None else torch.zeros_like(valid)
    prompts = [input_ids[b][valid[b] & ~response[b]].tolist() for b in range(input_ids.shape[0])]
    ids = torch.tensor(pad_sequences(prompts, pad_id), dtype=torch.long, device=input_ids.device)
    mask = torch.tensor(pad_sequences([[1] * len(p) for p in prompts], 0), dtype=torch.long, device=input_ids.device)
    if labels is None:
        return ids, mask, None
    answers = [labels[b][response[b]].tolist() for b in range(labels.shape[0])]
    return ids, mask, torch.tensor(pad_sequences(answers, IGNORE_INDEX), dtype=torch.long, device=labels.device)


def _is_builtin_tokenizer(card: ResolvedCard) -> bool:
    llm = card.data["llm"]
    return llm.get("tokenizer") == "bytes" or (llm.get("tokenizer") is None and llm.get("pretrained") is None)
