"""``unit_speechlm``: a ``speechlm`` whose LLM also speaks in discrete units (SpeechGPT, VoxtLM, SPIRIT-LM).

The ``token_space`` fusion adds the units to the vocabulary on both sides (``output_units``): unit ``k`` is token
``unit_offset + k``, embedded from the fusion's unit table and predicted by its extra head rows. Teacher-forced
training on speech answers puts the answer's units into the response (:meth:`UnitSpeechLM.prepare_batch`,
``response_units``: the card's audio tag in a response marks where they go, SpeechGPT's ``<sosp>{units}<eosp>``);
the loss is over text and unit tokens alike. :meth:`UnitSpeechLM.generate_speech` decodes over the whole
vocabulary, splits each answer into its text and its units, and the vocoder turns the units into speech;
``generate`` stays text only (the LLM's own vocabulary, transformers' generation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from slmzoo.components import LMOutput, causal_lm_loss, decode_with_cache, default_position_ids
from slmzoo.errors import CapabilityError
from slmzoo.fusion_utils import pad_rows
from slmzoo.model import SpeechLM
from slmzoo.prompting import IGNORE_INDEX


@dataclass
class SpokenAnswer:
    """What :meth:`UnitSpeechLM.generate_speech` returns, per item: the answer's text, its speech ``[S_i]`` at
    ``sampling_rate`` (empty when it said no units) and the units it said ``[T_i]``."""

    texts: list[str]
    audio: list[torch.Tensor]
    sampling_rate: int
    units: list[torch.Tensor]


class UnitSpeechLM(SpeechLM):
    """Sections of ``speechlm`` plus ``vocoder``."""

    def __init__(self, card, encoder, adapter, fusion, llm, vocoder=None, processor=None):
        super().__init__(card, encoder, adapter, fusion, llm, processor=processor, vocoder=vocoder)
        if not getattr(fusion, "output_units", False):
            raise ValueError("fusion.output_units: a unit_speechlm model answers in speech units; use "
                             "{type: token_space, output_units: true}")
        if llm.is_encoder_decoder:
            raise ValueError("llm: unit_speechlm needs a causal LM (the units are its tokens)")
        if vocoder is not None and vocoder.num_units != fusion.num_units:
            raise ValueError(f"vocoder: it reads {vocoder.num_units} units but the LLM writes {fusion.num_units} "
                             "(fusion.num_units)")

    def speaks(self) -> bool:
        return self.vocoder is not None

    def section_dims(self, section: str) -> tuple[int | None, float | None]:
        if section == "vocoder":
            return None, self.vocoder.sampling_rate / self.vocoder.hop_length  # unit frames per second
        return super().section_dims(section)

    # -- training --------------------------------------------------------------------------------------
    def language_model(self, fused) -> LMOutput:
        """The LLM over text and unit tokens: ``logits [B, L, V + num_units]``, the loss on both."""
        position_ids = default_position_ids(fused.attention_mask)
        hidden, _ = self.llm.hidden_states(fused.inputs_embeds, fused.attention_mask, position_ids=position_ids)
        logits = self.fusion.head(self.llm, hidden)
        return LMOutput(loss=None if fused.labels is None else causal_lm_loss(logits, fused.labels), logits=logits)

    def prepare_batch(self, audio: Sequence, prompts: Sequence | None = None, responses: Sequence[str] | None = None,
                      sampling_rate: int | None = None, padding_side: str = "right",
                      response_units: Sequence | None = None) -> dict[str, Any]:
        """:meth:`SpeechLM.prepare_batch`; ``response_units[i]`` (unit ids, or None for a text answer) replace the
        audio tag in ``responses[i]`` (``"<sosp><|unit|><eosp>"``) as unit tokens, in the inputs and labels."""
        batch = super().prepare_batch(audio, prompts, responses, sampling_rate, padding_side)
        if response_units is None:
            return batch
        if responses is None or len(response_units) != len(responses):
            raise ValueError("response_units: one entry (units or None) per response")
        return insert_units(batch, response_units, self.audio_token_id, self.fusion.unit_offset,
                            self.fusion.num_units, self.processor.pad_token_id, padding_side)

    def training_dataset(self, train, augment: bool = True, strict: bool = False):
        """:class:`SpeechDataset` batches whose spoken answers (a cut's ``custom["answer_units"]``, the JSONL field
        ``answer_units``, with the audio tag in its ``answer``) carry their unit tokens."""
        return SpokenAnswers(super().training_dataset(train, augment, strict), self)

    # -- speaking --------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_speech(self, audio: Sequence, sampling_rate: int | None = None, prompts: Sequence | None = None,
                        max_new_tokens: int = 512, do_sample: bool = False, temperature: float = 1.0,
                        top_p: float = 1.0) -> SpokenAnswer:
        """Answer each audio item over text and unit tokens (greedy by default, with the KV cache); the units are
        vocoded into speech."""
        if self.vocoder is None:
            raise CapabilityError("this card has no vocoder section: it writes units but cannot speak them")
        ids = self.generate_unit_ids(audio, sampling_rate, prompts, max_new_tokens, do_sample=do_sample,
                                     temperature=temperature, top_p=top_p)
        texts, units = self.split_answers(ids)
        return SpokenAnswer(texts=texts, audio=self.vocode(units), sampling_rate=self.vocoder.sampling_rate,
                            units=units)

    @torch.no_grad()
    def generate_unit_ids(self, audio: Sequence, sampling_rate: int | None = None, prompts: Sequence | None = None,
                          max_new_tokens: int = 512, **sampling) -> torch.Tensor:
        """New token ids ``[B, N]`` over the extended vocabulary (units are ``unit_offset + k``)."""
        batch, _, fused = self.fused_prompts(audio, prompts, sampling_rate)
        with self.llm.with_audio(self.rows_with_audio(batch)):
            return decode_with_cache(self.llm, fused.inputs_embeds, fused.attention_mask,
                                     head=lambda hidden: self.fusion.head(self.llm, hidden),
                                     embed=lambda ids: self.fusion.embed_tokens(self.llm, ids),
                                     stops=self.processor.stop_token_ids, pad=self.processor.pad_token_id,
                                     max_new_tokens=max_new_tokens, **sampling)

    def split_answers(self, ids: torch.Tensor) -> tuple[list[str], list[torch.Tensor]]:
        """Generated ids ``[B, N]`` -> each row's text (its text tokens, cut at the first stop) and units ``[T_i]``
        (its unit tokens, in order)."""
        offset, stops = self.fusion.unit_offset, set(self.processor.stop_token_ids)
        texts, units = [], []
        for row in ids.tolist():
            row = row[: next((i for i, t in enumerate(row) if t in stops), len(row))]
            texts.append(self.tokenizer.decode([t for t in row if t < offset], skip_special_tokens=True).strip())
            units.append(torch.tensor([t - offset for t in row if t >= offset], dtype=torch.long))
        return texts, units

    def vocode(self, units: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each answer's units ``[T_i]`` -> its speech ``[S_i]`` (the vocoder collapses repeats if it predicts
        durations)."""
        if not units:
            return []
        padded, _ = pad_rows([u.to(self.device) for u in units], 0)
        lengths = torch.tensor([len(u) for u in units], dtype=torch.long, device=self.device)
        with torch.autocast(self.device.type, enabled=False):
            audio, samples = self.vocoder(padded, lengths)
        return [audio[i, : int(samples[i])].cpu() for i in range(len(units))]


class SpokenAnswers(torch.utils.data.Dataset):
    """A speech dataset's batches with each spoken answer's units inserted (:func:`insert_units`)."""

    def __init__(self, dataset, model: UnitSpeechLM):
        self.dataset = dataset
        self.audio_token_id, self.pad_id = model.audio_token_id, model.processor.pad_token_id
        self.offset, self.num_units = model.fusion.unit_offset, model.fusion.num_units

    def __getitem__(self, item) -> dict[str, Any]:
        batch = self.dataset[item]
        if "labels" not in batch:
            return batch
        cuts = item[1] if isinstance(item, tuple) else item
        units = {cut.id: (cut.custom or {}).get("answer_units") for cut in cuts}
        answer_units = [units.get(i) for i in batch["ids"]]
        if all(u is None for u in answer_units):
            return batch
        return insert_units(batch, answer_units, self.audio_token_id, self.offset, self.num_units, self.pad_id)


def insert_units(batch: dict, response_units: Sequence, audio_token_id: int, offset: int, num_units: int,
                 pad_id: int, padding_side: str = "right") -> dict:
    """A training batch whose responses hold an audio tag each where ``response_units[b]`` is given -> the same
    batch with that tag replaced by the unit tokens ``offset + u`` (labelled), rows re-padded."""
    ids, masks, labels = [], [], []
    for b, units in enumerate(response_units):
        valid = batch["attention_mask"][b].bool()
        row, row_labels = batch["input_ids"][b][valid], batch["labels"][b][valid]
        tags = torch.nonzero((row == audio_token_id) & (row_labels != IGNORE_INDEX)).flatten().tolist()
        if units is not None:
            units = torch.as_tensor(units, dtype=torch.long)
            if len(tags) != 1:
                raise ValueError(f"responses[{b}]: put the audio tag once where its units go (found {len(tags)})")
            if units.numel() and (int(units.min()) < 0 or int(units.max()) >= num_units):
                raise ValueError(f"response_units[{b}]: a unit outside [0, {num_units})")
            tokens = units.to(row.device) + offset
            at = tags[0]
            row = torch.cat([row[:at], tokens, row[at + 1:]])
            row_labels = torch.cat([row_labels[:at], tokens, row_labels[at + 1:]])
        elif tags:
            raise ValueError(f"responses[{b}] has an audio tag but response_units[{b}] is None")
        ids.append(row)
        labels.append(row_labels)
    input_ids, mask = pad_rows(ids, pad_id, padding_side)
    return {**batch, "input_ids": input_ids, "attention_mask": mask.to(batch["attention_mask"].dtype),
            "labels": pad_rows(labels, IGNORE_INDEX, padding_side)[0]}
