"""``duplex_s2s``: NeMo speechlm2's ``DuplexS2SModel`` (``duplex_s2s_model.py``), a full-duplex speech-to-speech
model on one 80 ms frame clock.

At frame ``t`` the LLM's input is the sum of the agent's text token of frame ``t``, the K code embeddings of the
agent's speech at frame ``t - 1`` and the user's encoder frame ``t`` (scaled); the LLM head predicts the text of
frame ``t + 1`` and the speech head all K codebooks of frame ``t`` (the text leads the speech by one frame)::

    frame t         0     1     2     3     4     5     6     7
    user            u0    u1    u2    u3    u4    u5    u6    u7
    text[t]         P     P     P     B     x1    x2    P     E      (P pad, B bos, E eos)
    codes[t]        c0    c1    c2    SB    c4    c5    c6    SE     (speech BOS/EOS where the text is B/E)
    audio_in[t]     D     c0    c1    c2    SB    c4    c5    c6     (D delay)

The loss is ``text_weight * CE_sum(text) / N + audio_weight * CE_sum(audio) / (N * K)`` with ``N`` the valid
frames, summed over every frame as NeMo does (padding included; ``duplex.masked_loss`` leaves padding out).
Inference (:meth:`DuplexS2S.generate_duplex`) is NeMo's greedy frame-by-frame loop with a KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from slmzoo.architecture import Architecture, ModelOutput
from slmzoo.components import lengths_to_mask
from slmzoo.errors import CapabilityError
from slmzoo_plugins.duplex.specs import DuplexSettings
from slmzoo_plugins.duplex.processing import bos_token
from slmzoo_plugins.duplex.token_channel import TextChannelIds


@dataclass
class FrameInputs:
    """One batch laid out on the frame clock (``T`` frames; inputs and targets are ``T - 1`` long)."""

    embeds: torch.Tensor  # [B, T-1, H] LLM input
    audio_in: torch.Tensor  # [B, T-1, K] previous frame's codes at each position
    text_labels: torch.Tensor  # [B, T-1]
    audio_labels: torch.Tensor  # [B, T-1, K]
    lengths: torch.Tensor  # [B] valid positions (valid frames - 1)
    user: torch.Tensor | None = None  # [B, T_user, H] the user channel as the LLM reads it (unscaled)
    user_lengths: torch.Tensor | None = None  # [B]


@dataclass
class DuplexOutput:
    """What :meth:`DuplexS2S.generate_duplex` returns: per conversation, the agent's text (all turns joined) and
    speech (``[S_i]`` at ``sampling_rate``, frame-aligned with the input), and the raw channels."""

    texts: list[str]
    audio: list[torch.Tensor] | None
    sampling_rate: int
    text_tokens: torch.Tensor  # [B, T]
    audio_codes: torch.Tensor  # [B, T, K]
    lengths: torch.Tensor  # [B] frames


def text_channel_ids(tokenizer, settings: DuplexSettings) -> TextChannelIds:
    """BOS, EOS and PAD of the text channel. PAD is the tokenizer's pad token, else its unknown token (NeMo's
    ``get_pad_id``: TinyLlama has no pad, so pad = ``<unk>`` = 0)."""
    bos = bos_token(tokenizer, settings)
    pad = tokenizer.pad_token_id
    if tokenizer.pad_token == tokenizer.eos_token and tokenizer.unk_token is not None:
        pad = tokenizer.unk_token_id  # the processor made EOS the pad of a tokenizer that had none
    return TextChannelIds(bos=tokenizer.convert_tokens_to_ids(bos), eos=tokenizer.eos_token_id, pad=pad)


class DuplexS2S(Architecture):
    """Sections: ``encoder``, ``adapter`` (the user channel's perception), ``llm``, ``codec``, ``speech_head``."""

    def __init__(self, card, processor=None, **components):
        super().__init__(card, processor, **components)
        self.settings = card.validated.duplex if card is not None else DuplexSettings()
        self.text_ids = text_channel_ids(self.tokenizer, self.settings)
        self.vocabulary = self.speech_head.vocabulary
        self.codec.requires_grad_(False)
        # The auxiliary transcript head of the user channel (``duplex.user_ctc_weight``): blank is the last class.
        self.user_ctc = (torch.nn.Linear(self.llm.hidden_size, len(self.tokenizer) + 1)
                         if self.settings.user_ctc_weight > 0 else None)

    # -- the three streams -----------------------------------------------------------------------------
    def perceive(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The user channel: ``audio [B, S]`` -> ``[B, T, H]`` frames in the LLM width, ``lengths [B]``."""
        encoded = self.encoder(audio, lengths)
        adapted = self.adapter(encoded.hidden, encoded.lengths)
        return adapted.embeds, adapted.lengths

    def speech_codes(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The agent channel: ``audio [B, S']`` at the codec's rate -> codes ``[B, T, K]``, in fp32, no gradient."""
        with torch.no_grad(), torch.autocast(audio.device.type, enabled=False):
            codes, code_lengths = self.codec.encode(audio.float(), lengths)
        return codes.transpose(1, 2), code_lengths

    def frame_embeddings(self, text: torch.Tensor, previous_codes: torch.Tensor) -> torch.Tensor:
        """``text [B, T]`` and ``previous_codes [B, T, K]`` -> ``[B, T, H]``, text first, then the codebooks (NeMo's
        order: bf16 addition is not associative, so training and inference add alike)."""
        embeds = self.llm.embed(text)
        if self.speech_head.embeds_into_llm:
            embeds = embeds + self.speech_head.embed(previous_codes)
        return embeds

    def mark_turns(self, codes: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Every codebook of a frame whose text is BOS (EOS) becomes speech BOS (EOS)."""
        codes = codes.masked_fill((text == self.text_ids.bos)[..., None], self.vocabulary.bos)
        return codes.masked_fill((text == self.text_ids.eos)[..., None], self.vocabulary.eos)

    # -- training ----------------------------------------------------------------------------------------
    def prepare_inputs(self, batch: dict[str, torch.Tensor]) -> FrameInputs:
        """NeMo's ``prepare_inputs``: the three streams cut to a common length, turns marked in the codes, the codes
        delayed one frame, and the teacher-forced inputs and targets."""
        user, user_lengths = self.perceive(batch["audio"].to(self._float_dtype()), batch["audio_lens"])
        codes, code_lengths = self.speech_codes(batch["target_audio"], batch["target_audio_lens"])
        frames = min(user.shape[1], codes.shape[1])
        text = batch["target_tokens"][:, :frames]
        if text.shape[1] < frames:
            text = F.pad(text, (0, frames - text.shape[1]), value=self.text_ids.pad)
        codes = self.mark_turns(codes[:, :frames], text)
        delayed = torch.cat([torch.full_like(codes[:, :1], self.vocabulary.delay), codes[:, :-1]], dim=1)
        lengths = torch.minimum(user_lengths, code_lengths).clamp(max=frames) - 1
        embeds = self.frame_embeddings(text[:, :-1], delayed[:, :-1])
        embeds = embeds + self.settings.user_channel_weight * user[:, : frames - 1].to(embeds.dtype)
        return FrameInputs(embeds=embeds, audio_in=delayed[:, :-1], text_labels=text[:, 1:],
                           audio_labels=delayed[:, 1:], lengths=lengths.clamp(min=0), user=user,
                           user_lengths=user_lengths)

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        inputs = self.prepare_inputs(batch)
        mask = torch.ones(inputs.embeds.shape[:2], dtype=torch.long, device=inputs.embeds.device)
        hidden, _ = self.llm.hidden_states(inputs.embeds, mask)
        text_logits = self.llm.head(hidden).float()
        audio_logits = self.speech_head(hidden, inputs.audio_in).float()
        output = self.loss(text_logits, audio_logits, inputs)
        if self.user_ctc is not None:
            ctc = self.user_ctc_loss(inputs.user, inputs.user_lengths, batch["source_ids"], batch["source_id_lens"])
            output.loss = output.loss + self.settings.user_ctc_weight * ctc
            output.losses["user_ctc_loss"] = ctc
        return output

    def user_ctc_loss(self, user: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
                      target_lengths: torch.Tensor) -> torch.Tensor:
        """CTC of the user's transcript ``targets [B, L]`` on the user channel ``user [B, T, H]``, per transcript
        token, batch mean (the stand-in for the ASR pretraining of NeMo's encoder)."""
        log_probs = self.user_ctc(user).float().log_softmax(-1)
        return F.ctc_loss(log_probs.transpose(0, 1), targets, lengths, target_lengths,
                          blank=self.user_ctc.out_features - 1, zero_infinity=True)

    def loss(self, text_logits: torch.Tensor, audio_logits: torch.Tensor, inputs: FrameInputs) -> ModelOutput:
        """``text_logits [B, T, V]``, ``audio_logits [B, T, K, V']`` -> NeMo's weighted, frame-normalised loss."""
        frames = int(inputs.lengths.sum())
        text_labels, audio_labels = inputs.text_labels, inputs.audio_labels
        if self.settings.masked_loss:
            padded = ~lengths_to_mask(inputs.lengths, text_labels.shape[1])
            text_labels = text_labels.masked_fill(padded, -100)
            audio_labels = audio_labels.masked_fill(padded[..., None], -100)
        text = F.cross_entropy(text_logits.flatten(0, 1), text_labels.flatten(), reduction="sum",
                               ignore_index=-100) / max(frames, 1)
        audio = F.cross_entropy(audio_logits.flatten(0, 2), audio_labels.flatten(), reduction="sum",
                                ignore_index=-100) / max(frames * self.vocabulary.num_codebooks, 1)
        loss = self.settings.text_loss_weight * text + self.settings.audio_loss_weight * audio
        return ModelOutput(loss=loss, num_tokens=frames, losses={"text_loss": text, "audio_loss": audio})

    def training_dataset(self, train, augment: bool = True, strict: bool = False):
        from slmzoo_plugins.duplex.dataset import DuplexDataset

        return DuplexDataset(self.tokenizer, self.text_ids, self.settings, self.sampling_rate,
                             self.codec.sampling_rate, strict)

    def evaluate_cuts(self, cuts: list, batch_size: int = 16, normalize: str = "english", max_new_tokens: int = 128,
                      issues=None, asr=None):
        """``slmzoo eval``: text BLEU, exact conversations and right answers; with ``asr``, ASR-BLEU of the generated
        speech, its right answers, and the codec's ceiling (``evaluation.evaluate_duplex``)."""
        from slmzoo_plugins.duplex.evaluation import evaluate_duplex

        return evaluate_duplex(self, cuts, batch_size, normalize, issues, asr)

    def decode_metrics(self, cuts: list, batch_size: int = 32) -> dict[str, float]:
        """The agent text's corpus BLEU, exact conversations and right answers against the cuts' agent turns
        (Whisper-normalised); an unreadable validation clip is skipped, as in training."""
        from slmzoo.data import DataIssues
        from slmzoo_plugins.duplex.evaluation import answer_accuracy, score_texts, transcribe_duplex

        records = transcribe_duplex(self, cuts, batch_size, decode_audio=False, issues=DataIssues())
        metrics = score_texts([r["reference"] for r in records], [r["text"] for r in records])
        return {"val_text_bleu": metrics["bleu"], "val_text_exact": metrics["exact"],
                "val_answers_right": answer_accuracy(records)}

    # -- inference -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_duplex(self, audio: Sequence | torch.Tensor, sampling_rate: int | None = None,
                        lengths: torch.Tensor | None = None, decode_audio: bool = True) -> DuplexOutput:
        """Greedy, frame-synchronous decoding of the agent for each conversation's user channel.

        ``audio``: waveforms ``[S_i]`` (at ``sampling_rate``, default the encoder's) or audio file paths, or a
        zero-padded ``[B, S]`` tensor with ``lengths [B]``. The user channel is encoded whole (the encoder's limited
        look-ahead makes this NeMo's "simulated streaming"); then one LLM step per frame with the KV cache."""
        wave, wave_lengths = self._user_audio(audio, sampling_rate, lengths)
        user, frames = self.perceive(wave.to(self._float_dtype()), wave_lengths)
        user = user * self.settings.user_channel_weight
        batch, total = user.shape[:2]
        device, vocabulary = user.device, self.vocabulary
        text = torch.full((batch, total), self.text_ids.pad, dtype=torch.long, device=device)
        codes = torch.full((batch, total, vocabulary.num_codebooks), vocabulary.delay, dtype=torch.long,
                           device=device)
        previous_text = text[:, :1].clone()  # step 0: pad text and delay codes
        previous_codes = codes[:, :1].clone()
        cache, head_state, mask = None, None, torch.zeros(batch, 0, dtype=torch.long, device=device)
        for t in range(total):
            step = user[:, t : t + 1] + self.frame_embeddings(previous_text, previous_codes).to(user.dtype)
            mask = F.pad(mask, (0, 1), value=1)
            positions = torch.full((batch, 1), t, dtype=torch.long, device=device)
            hidden, cache = self.llm.hidden_states(step, mask, position_ids=positions, past_key_values=cache,
                                                   use_cache=True)
            text[:, t] = self.llm.head(hidden)[:, -1].argmax(-1)
            logits, head_state = self.speech_head.step(hidden, previous_codes, head_state)
            codes[:, t] = logits[:, -1].argmax(-1)
            previous_text, previous_codes = text[:, t : t + 1], codes[:, t : t + 1]
        texts = self.decode_text(text, frames)
        speech = self.decode_speech(codes, frames) if decode_audio else None
        return DuplexOutput(texts=texts, audio=speech, sampling_rate=self.codec.sampling_rate, text_tokens=text,
                            audio_codes=codes, lengths=frames)

    def generate(self, audio: Sequence, sampling_rate: int | None = None, prompts: Sequence | None = None,
                 **unused) -> list[str]:
        """The agent's text for each conversation (what ``slmzoo generate`` prints); a duplex model takes no
        prompt: it listens to the whole user channel."""
        if prompts is not None and any(p is not None for p in prompts):
            raise CapabilityError("a duplex model takes no prompt: it answers what the user channel says")
        items = list(audio) if isinstance(audio, (list, tuple)) else [audio]
        return self.generate_duplex(items, sampling_rate, decode_audio=False).texts

    def speaks(self) -> bool:
        return True

    def generate_speech(self, audio: Sequence, sampling_rate: int | None = None, prompts: Sequence | None = None,
                        **unused) -> DuplexOutput:
        """The agent's text and speech for each conversation (``slmzoo generate ... --out``); no prompt."""
        if prompts is not None and any(p is not None for p in prompts):
            raise CapabilityError("a duplex model takes no --prompt: it answers what the user channel says")
        return self.generate_duplex(list(audio) if isinstance(audio, (list, tuple)) else [audio], sampling_rate)

    def decode_text(self, text: torch.Tensor, frames: torch.Tensor) -> list[str]:
        """NeMo's ``tokens_to_str``: each row cut to its frames, pad dropped, special tokens removed."""
        rows = []
        for row, length in zip(text.tolist(), frames.tolist()):
            ids = [i for i in row[:length] if i != self.text_ids.pad]
            rows.append(self.tokenizer.decode(ids, skip_special_tokens=True).strip())
        return rows

    def decode_turns(self, text: torch.Tensor, frames: torch.Tensor) -> list[list[str]]:
        """Each row's agent turns, one string per BOS ... EOS stretch of the text channel."""
        conversations = []
        for row, length in zip(text.tolist(), frames.tolist()):
            turns, current = [], None
            for token in row[:length]:
                if token == self.text_ids.bos:
                    if current is not None:
                        turns.append(current)
                    current = []
                elif token == self.text_ids.eos:
                    if current is not None:
                        turns.append(current)
                    current = None
                elif current is not None and token != self.text_ids.pad:
                    current.append(token)
            if current is not None:
                turns.append(current)
            conversations.append([self.tokenizer.decode(t, skip_special_tokens=True).strip() for t in turns])
        return conversations

    def decode_speech(self, codes: torch.Tensor, frames: torch.Tensor) -> list[torch.Tensor]:
        """``codes [B, T, K]`` -> waveforms ``[S_i]``. Control codes first become the same codebook's code of frame 0,
        which is silence (NeMo's ``replace_control_speech_codes``)."""
        control = codes >= self.vocabulary.codebook_size
        first = codes[:, :1].clamp(max=self.vocabulary.codebook_size - 1).expand_as(codes)
        codes = torch.where(control, first, codes)
        with torch.autocast(codes.device.type, enabled=False):
            audio, samples = self.codec.decode(codes.transpose(1, 2), frames)
        return [audio[i, : int(samples[i])].cpu() for i in range(audio.shape[0])]

    def _user_audio(self, audio, sampling_rate, lengths) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(audio, torch.Tensor) and audio.dim() == 2:
            if lengths is None:
                lengths = torch.full((audio.shape[0],), audio.shape[1], dtype=torch.long)
            return audio.to(self.device), lengths.to(self.device)
        from slmzoo_plugins.duplex.dataset import pad_waves

        waves = [self.processor.load_audio(item, sampling_rate, name=f"audio[{i}]") for i, item in enumerate(audio)]
        wave, wave_lengths = pad_waves(waves)
        return wave.to(self.device), wave_lengths.to(self.device)

    def _float_dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype

    def section_dims(self, section: str) -> tuple[int | None, float | None]:
        if section == "codec":
            return self.codec.num_codebooks, self.codec.frame_rate
        return super().section_dims(section)

    def extra_repr(self) -> str:
        return f"text ids {self.text_ids}, speech {self.vocabulary}"

