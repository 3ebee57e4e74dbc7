"""``SpeechLM``, the ``speechlm`` architecture: encoder -> adapter -> fusion -> LLM, built from a card.

``forward(batch)`` returns the loss over response tokens only; ``generate`` decodes in batches with the
LLM's KV cache. Padded audio never reaches the LLM: the encoder masks it, the adapter drops it, and the
fusion takes each clip's valid embeddings only, so an output never depends on its batch companions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from slmzoo.architecture import Architecture, ModelOutput, TrainPolicyError  # noqa: F401 (TrainPolicyError: API)
from slmzoo.components import LMOutput
from slmzoo.prompting import IGNORE_INDEX, pad_sequences


@dataclass
class SpeechLMOutput(ModelOutput):
    logits: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None  # the adapter's auxiliary loss (CTC), already part of ``loss``


@dataclass
class Generated:
    """:meth:`SpeechLM.generate_output`: new token ids ``[B, N]``, and per row the audio embeddings ``[B]`` and all
    tokens ``[B]`` (text and audio) of its prompt."""

    ids: torch.Tensor
    audio_tokens: torch.Tensor
    prompt_tokens: torch.Tensor


class SpeechLM(Architecture):
    """Sections ``encoder``, ``adapter``, ``fusion`` (default ``concat``) and ``llm``; an architecture built on it
    may add sections of its own (``**sections``)."""

    def __init__(self, card, encoder, adapter, fusion, llm, processor=None, **sections):
        super().__init__(card, processor=processor if processor is not None else llm.processor,
                         encoder=encoder, adapter=adapter, fusion=fusion, llm=llm, **sections)

    def train(self, mode: bool = True):
        """As ``nn.Module.train``; an encoder under a fitted adapter (discrete units) stays in inference mode: in
        training mode HuBERT masks frames (SpecAugment) and drops activations, so the units the LLM learnt from
        would not be the ones inference gives it."""
        super().train(mode)
        if self.adapter.fitted_on_encoder:
            self.encoder.train(False)
        return self

    def audio_tokens_per_second(self) -> float | None:
        """Audio embeddings reaching the LLM per second of audio (``None``: a fixed number per clip)."""
        return self.adapter.output_frame_rate(self.encoder.frame_rate)

    def section_dims(self, section: str) -> tuple[int | None, float | None]:
        if section == "encoder":
            return self.encoder.output_dim, self.encoder.frame_rate
        if section == "adapter":
            return getattr(self.adapter, "output_dim", None), self.adapter.output_frame_rate(self.encoder.frame_rate)
        if section == "llm":
            return self.llm.hidden_size, None
        return None, None

    # -- the pipeline ------------------------------------------------------------------------------
    def encode_audio(self, audio: torch.Tensor, audio_lens: torch.Tensor) -> tuple[list[torch.Tensor], Any]:
        """``audio [N, S]``, ``audio_lens [N]`` -> one ``[T_i, D]`` tensor of valid embeddings per clip
        (``[T_i]`` unit ids for a token-mapping adapter: the fusion embeds them). No clips (text-only prompts): none."""
        if audio.shape[0] == 0:
            from slmzoo.components import AdapterOutput

            return [], AdapterOutput(embeds=None, lengths=audio_lens)
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
        if self.llm.is_encoder_decoder:  # the prompt feeds the encoder, the response the decoder
            input_ids, attention_mask, labels = split_prompt_response(input_ids, attention_mask, labels,
                                                                      self.processor.pad_token_id)
            fused = self.fusion.fuse(self.llm, input_ids, attention_mask, embeds, padding_side="right")
            fused.labels = labels
        else:
            fused = self.fusion.fuse(self.llm, input_ids, attention_mask, embeds, labels=labels, padding_side="right")
        with self.llm.with_audio(self.rows_with_audio(batch)):
            out = self.language_model(fused)
        loss, aux_loss = out.loss, adapted.aux_loss
        if labels is not None and len(embeds) == labels.shape[0]:
            extra_loss = self.adapter.auxiliary_loss(self._response_ids(labels))
            if extra_loss is not None:
                aux_loss = extra_loss if aux_loss is None else aux_loss + extra_loss
        if aux_loss is not None and loss is not None:
            loss = loss + aux_loss
        shift = 0 if self.llm.is_encoder_decoder else 1  # causal LMs predict token t from t-1
        num_tokens = int((fused.labels[:, shift:] != IGNORE_INDEX).sum()) if fused.labels is not None else 0
        losses = {"text": out.loss} if aux_loss is not None and out.loss is not None else {}
        if aux_loss is not None:
            losses["aux"] = aux_loss
        return SpeechLMOutput(loss=loss, logits=out.logits, num_tokens=num_tokens, aux_loss=aux_loss, losses=losses)

    def language_model(self, fused) -> LMOutput:
        """The teacher-forced LLM pass over fused inputs: logits and the next-token loss on ``fused.labels``
        (an architecture whose vocabulary extends the LLM's overrides it)."""
        return self.llm(fused.inputs_embeds, fused.attention_mask, labels=fused.labels, **fused.extra)

    def _response_ids(self, labels: torch.Tensor) -> list[torch.Tensor]:
        """Each row's response token ids ``[S_i]`` from ``labels [B, L]``, without end-of-turn tokens."""
        stops = torch.tensor(self.processor.stop_token_ids, device=labels.device)
        return [row[(row != IGNORE_INDEX) & ~torch.isin(row, stops)] for row in labels]

    # -- batches from raw inputs -------------------------------------------------------------------
    def prepare_batch(self, audio: Sequence, prompts: Sequence | None = None, responses: Sequence[str] | None = None,
                      sampling_rate: int | None = None, padding_side: str = "right") -> dict[str, Any]:
        """Tokenize prompts (and responses, for training) and load audio into a model batch: the processor's
        job (``model.processor(...)``), here for convenience.

        ``audio[i]`` is a waveform / path, or a list of them for a prompt with several audio tags.
        ``prompts[i]`` is text, a chat (list of ``{"role", "content"}``), or None for the default task.
        """
        return self.processor(audio, prompts, responses, sampling_rate=sampling_rate, padding_side=padding_side)

    @torch.no_grad()
    def generate(self, audio: Sequence, sampling_rate: int | None = None, prompts: Sequence | None = None,
                 max_new_tokens: int = 128, **generation_kwargs) -> list[str]:
        """Decode text for each audio item (greedy by default; transformers sampling options work)."""
        return self.decode(self.generate_ids(audio, sampling_rate, prompts, max_new_tokens, **generation_kwargs))

    @torch.no_grad()
    def generate_ids(self, audio: Sequence, sampling_rate: int | None = None, prompts: Sequence | None = None,
                     max_new_tokens: int = 128, **generation_kwargs) -> torch.Tensor:
        """:meth:`generate`'s new token ids ``[B, N]`` (rows that stopped early padded with the pad id)."""
        return self.generate_output(audio, sampling_rate, prompts, max_new_tokens, **generation_kwargs).ids

    @torch.no_grad()
    def generate_output(self, audio: Sequence, sampling_rate: int | None = None, prompts: Sequence | None = None,
                        max_new_tokens: int = 128, **generation_kwargs) -> "Generated":
        """:meth:`generate_ids` with each prompt's usage: what ``slmzoo serve`` reports for a model it cannot
        decode step by step (an encoder-decoder LLM)."""
        fused, usage, with_audio = self._fuse_requests(audio, prompts, sampling_rate)
        generation_kwargs.setdefault("do_sample", False)
        try:
            with self.llm.with_audio(with_audio):
                ids = self.llm.generate(fused.inputs_embeds, fused.attention_mask, max_new_tokens=max_new_tokens,
                                        **fused.extra, **generation_kwargs)
        finally:
            self.fusion.release()  # a later bare LLM call must not still see this batch's audio
        return Generated(ids, *usage)

    def _fuse_requests(self, audio: Sequence, prompts: Sequence | None, sampling_rate: int | None):
        """Requests -> the fused, left-padded LLM inputs (audio encoded once, in one batch), each row's usage:
        ``(audio_tokens [B], prompt_tokens [B])``, the prompt counted as its text tokens plus its audio embeddings
        whether the fusion puts them in the sequence or keeps them as memory, and the rows with audio ``[B]``."""
        batch, embeds, fused = self.fused_prompts(audio, prompts, sampling_rate)
        tags = self.audio_tags(batch)
        clip_tokens = torch.tensor([len(e) for e in embeds], dtype=torch.long).split(tags.tolist())
        audio_tokens = torch.stack([c.sum() for c in clip_tokens])
        prompt_tokens = batch["attention_mask"].bool().sum(-1).cpu() - tags.cpu() + audio_tokens
        return fused, (audio_tokens, prompt_tokens), tags > 0

    def fused_prompts(self, audio: Sequence, prompts: Sequence | None, sampling_rate: int | None):
        """Prompts and their audio as the LLM reads them before decoding: ``(batch, embeds, fused)``, the batch
        on the model's device, each clip's audio embeddings (or units), the left-padded fused inputs."""
        if not isinstance(audio, (list, tuple)):
            audio = [audio]
        batch = self.prepare_batch(list(audio), prompts, sampling_rate=sampling_rate, padding_side="left")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        embeds, _ = self.encode_audio(batch["audio"].to(self._float_dtype()), batch["audio_lens"])
        fused = self.fusion.fuse(self.llm, batch["input_ids"], batch["attention_mask"], embeds, padding_side="left")
        return batch, embeds, fused

    def speaks(self) -> bool:
        """Whether :meth:`generate_speech` answers in speech (``slmzoo generate ... --out``); a text model: no."""
        return False

    # -- step-wise decoding (continuous batching: ``slmzoo serve``) ----------------------------------------
    def supports_stepwise_decoding(self) -> bool:
        """True when rows can join and leave a running batch between steps (:mod:`slmzoo.decoding`): a causal LM,
        and a fusion that keeps no audio between calls (``concat``, ``prefix``, ``token_space``) or hands what it
        keeps to the batch row by row (the memory fusions: ``cross_attention``, ``gated_xattn``, ``adapter_prompt``)."""
        from slmzoo.components import Fusion

        fusion = type(self.fusion)
        keeps_nothing = fusion.release is Fusion.release
        return not self.llm.is_encoder_decoder and (keeps_nothing or fusion.decoding_state is not Fusion.decoding_state)

    @torch.no_grad()
    def prefill(self, audio: Sequence, prompts: Sequence | None = None, sampling_rate: int | None = None):
        """New requests -> a :class:`slmzoo.decoding.DecodingBatch` after their prompts: audio encoded once, in one
        batch, fused as ``generate`` fuses it. ``audio``/``prompts`` as for :meth:`generate`."""
        from slmzoo.decoding import DecodingBatch

        fused, (audio_tokens, prompt_tokens), with_audio = self._fuse_requests(audio, prompts, sampling_rate)
        decoding = DecodingBatch.prefill(self.llm, fused.inputs_embeds, fused.attention_mask, fusion=self.fusion,
                                         with_audio=with_audio)
        decoding.audio_tokens, decoding.prompt_tokens = audio_tokens, prompt_tokens
        return decoding

    def audio_tags(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B]``: the audio tags in each row's prompt."""
        return ((batch["input_ids"] == self.audio_token_id) & batch["attention_mask"].bool()).sum(-1)

    def rows_with_audio(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B]`` bool: the rows whose prompt holds audio (a text-only row runs the LLM without an ``audio_only``
        LoRA)."""
        return self.audio_tags(batch) > 0

    def decode(self, ids: torch.Tensor) -> list[str]:
        return self.processor.decode(ids)

    def _float_dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype

    # -- training --------------------------------------------------------------------------------------
    def decode_metrics(self, cuts: list, batch_size: int = 32) -> dict[str, float]:
        """Greedy WER and CER on the cuts, decoding a little past the longest reference (an untrained model
        would ramble to the limit)."""
        from slmzoo.data import prompt_and_response
        from slmzoo.evaluation import score, transcribe

        longest = max(len(self.tokenizer(prompt_and_response(c)[2]).input_ids) for c in cuts)
        records, _ = transcribe(self, cuts, batch_size, max_new_tokens=longest + 8)
        metrics = score(records)
        return {"val_wer": metrics["wer"], "val_cer": metrics["cer"]}


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
