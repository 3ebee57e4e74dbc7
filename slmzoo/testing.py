"""``slmzoo.testing``: the contract tests every registered component must pass, for first- and third-party plugins.

Each component is tested inside a *host*: the ``tiny`` preset of a registered card that uses it (or, for a
component no card uses, such a card with the component's ``ComponentSpec.example`` block in its section), built
with random weights, offline, in seconds. The checks:

- ``kind``: the component subclasses its kind's contract class (``ComponentKind.base``);
- ``meta``: the host builds on the meta device, the component's tensors all on it;
- ``batch``: a clip alone gives what the same clip gives batched with longer ones (encoders, adapters with garbage
  in the padding, fusions and language models: per-row logits over the real positions); for a fusion, also a row
  that joins a running step-wise decoding batch and one that stays after the other left (``slmzoo serve``);
- ``bad_input``: input it cannot take is refused with a ``ValueError`` that names it (the clip, the shape, the
  count);
- ``roundtrip``: the host's full ``save_pretrained``, moved elsewhere, loads back with ``from_pretrained`` to the
  same weights and outputs (so the component rebuilds from its card alone: ``standalone_options``);
- ``strict``: loading refuses a checkpoint missing one of the component's tensors, or with one it does not have,
  naming the tensor.

In a plugin's own tests (pytest)::

    from slmzoo.testing import CHECKS, check_component

    @pytest.mark.parametrize("check", CHECKS)
    def test_mean_pool_contract(check, tmp_path):
        check_component("adapter", "mean_pool", check, tmp_path)

``component_cases()`` lists every registered ``(kind, name)`` for a parametrised test over all of them.
Components of kinds other than the four of ``speechlm`` get the ``kind``, ``meta``, ``roundtrip`` and ``strict``
checks of their section in a host, or, with no host, of the component built on its own from its ``example``.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

CHECKS = ("kind", "meta", "batch", "bad_input", "roundtrip", "strict")
ATOL = 1e-4  # float32 tiny models: a padding leak moves outputs by far more


class ContractError(AssertionError):
    """A component breaks a contract; the message says which and how."""


@dataclass(frozen=True)
class Host:
    """Where a component is tested: a resolved card and the section holding the component (``card`` ``None``: the
    component is built on its own from ``options``)."""

    kind: str
    name: str
    card: Any = None
    section: str | None = None
    options: Any = None

    def build(self, meta: bool = False):
        from slmzoo.builder import build

        torch.manual_seed(0)
        return build(self.card, meta=meta).eval()

    def component(self, model):
        return getattr(model, self.section)


# -- finding hosts ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _tiny_cards() -> tuple:
    """``(card name, resolved tiny preset)`` of every registered card that has one and loads."""
    from slmzoo.card.errors import CardError
    from slmzoo.card.loader import card_index, load_card

    found = []
    for name in sorted(card_index()):
        try:
            found.append((name, load_card(name, preset="tiny")))
        except CardError:
            continue
    return tuple(found)


def host_for(kind: str, name: str) -> Host:
    """The host of a component: a card whose tiny preset uses it, else a tiny preset with a section of the
    component's kind given the component's ``example`` block, else the component on its own (its ``example``)."""
    from slmzoo.card.loader import load_card
    from slmzoo.card.validate import resolve_block
    from slmzoo.plugins import registry

    spec = registry().get(kind, name)
    if spec is None:
        raise ContractError(f"no {kind} {name!r} is registered")
    for _, card in _tiny_cards():
        for section in card.spec.sections:
            if section.kind == kind and card.data.get(section.name, {}).get("type") == spec.name:
                return Host(kind, spec.name, card, section.name)
    if spec.example is None:
        raise ContractError(f"{kind} {name!r}: no card's tiny preset uses it and its ComponentSpec has no example; "
                            "give ComponentSpec(example={...}) with small options (random weights, offline)")
    block = {"type": spec.name, **spec.example}
    for card_name, card in _tiny_cards():
        section = next((s.name for s in card.spec.sections if s.kind == kind), None)
        if section is not None:
            override = f"{section}={json.dumps(block)}"
            return Host(kind, spec.name, load_card(card_name, preset="tiny", overrides=[override]), section)
    _, options = resolve_block(kind, block)
    return Host(kind, spec.name, options=options)


def component_cases(registry=None) -> list[tuple[str, str]]:
    """Every registered component as ``(kind, name)``, for ``pytest.mark.parametrize``."""
    if registry is None:
        from slmzoo.plugins import registry as _registry

        registry = _registry()
    return [(spec.kind, spec.name) for spec in registry.list()]


def check_component(kind: str, name: str, check: str = "all", tmp_path: str | Path | None = None) -> None:
    """Run one contract check (or ``"all"``) on a registered component; raises :class:`ContractError`."""
    host = host_for(kind, name)
    checks = CHECKS if check == "all" else (check,)
    for one in checks:
        if one not in CHECKS:
            raise ValueError(f"unknown check {one!r}; checks: {', '.join(CHECKS)}")
        if tmp_path is None and one in ("roundtrip", "strict"):
            with tempfile.TemporaryDirectory() as folder:
                _CHECKS[one](host, Path(folder))
        else:
            _CHECKS[one](host, Path(tmp_path) if tmp_path is not None else None)


# -- kind and meta ---------------------------------------------------------------------------------------------
def assert_is_of_kind(host: Host, tmp_path=None) -> None:
    from slmzoo.builder import ComponentTypeError
    from slmzoo.plugins import registry

    kind = registry().kinds.get(host.kind)
    if kind is None:
        raise ContractError(f"{host.kind} {host.name!r}: no plugin registers the kind {host.kind!r}")
    try:
        component = _standalone(host) if host.card is None else host.component(host.build(meta=True))
    except ComponentTypeError as error:  # the builder refuses it: say so as a broken contract
        raise ContractError(str(error)) from None
    base = kind.load_base()
    if not isinstance(component, base):
        raise ContractError(f"{host.kind} {host.name!r}: {type(component).__name__} does not subclass "
                            f"{base.__module__}.{base.__name__}, the contract of kind {host.kind!r}")


def assert_meta_build(host: Host, tmp_path=None) -> None:
    """Built on the meta device, every weight of the component (its state dict) is on it: no memory, no download.
    Non-persistent buffers (constants derived from the options, such as mel filters) may stay on the CPU."""
    if host.card is None:
        with torch.device("meta"):
            component = _standalone(host, meta=True)
    else:
        component = host.component(host.build(meta=True))
    tensors = list(component.state_dict().items())
    off = [n for n, t in tensors if not t.is_meta]
    if off:
        raise ContractError(f"{host.kind} {host.name!r}: a meta build left tensors off the meta device: "
                            f"{', '.join(off[:5])}")
    if host.kind != "fusion" and not tensors:  # a fusion may be pure data movement (concat)
        raise ContractError(f"{host.kind} {host.name!r}: the meta build has no parameters")


def _standalone(host: Host, meta: bool = False):
    from slmzoo.builder import BuildContext
    from slmzoo.plugins import registry

    torch.manual_seed(0)
    spec = registry().get(host.kind, host.name)
    return BuildContext(card=None, meta=meta, load_weights=False).build(spec, host.options, host.kind).eval()


# -- batch invariance ----------------------------------------------------------------------------------------
def _waves(rate: int, seconds: tuple[float, ...] = (1.6, 0.7), seed: int = 0) -> list[torch.Tensor]:
    """Speech-like test clips: chirps plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    clips = []
    for i, duration in enumerate(seconds):
        t = torch.arange(int(duration * rate)) / rate
        chirp = 0.2 * torch.sin(2 * torch.pi * (200 + 300 * t + 50 * i) * t)
        clips.append((chirp + 0.02 * torch.randn(t.shape, generator=generator)).float())
    return clips


def _pad(clips: list[torch.Tensor], fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([c.shape[0] for c in clips])
    out = torch.full((len(clips), int(lengths.max()), *clips[0].shape[1:]), fill, dtype=clips[0].dtype)
    for b, c in enumerate(clips):
        out[b, : c.shape[0]] = c
    return out, lengths


def _close(name: str, what: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ContractError(f"{name}: {what}: shapes {list(a.shape)} and {list(b.shape)} differ")
    if a.dtype in (torch.long, torch.int, torch.bool):
        if not torch.equal(a, b):
            raise ContractError(f"{name}: {what}: values differ")
        return
    diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    if not diff <= ATOL * (1 + b.abs().max().item() if b.numel() else 1):
        raise ContractError(f"{name}: {what}: differ by up to {diff:.3g}: padding or a batch companion leaks in")


def _frames(hidden: torch.Tensor, b: int, n: int) -> torch.Tensor:
    """Clip ``b``'s first ``n`` frames of ``[B, T, C]`` or ``[B, L, T, C]``."""
    return hidden[b, :, :n] if hidden.dim() == 4 else hidden[b, :n]


def _encoder_batch(host: Host, model) -> None:
    encoder, label = host.component(model), f"encoder {host.name!r}"
    clips = _waves(encoder.sampling_rate)
    with torch.no_grad():
        batched = encoder(*_pad(clips))
        for b, clip in enumerate(clips):
            alone = encoder(clip[None], torch.tensor([clip.shape[0]]))
            n = int(alone.lengths[0])
            if int(batched.lengths[b]) != n:
                raise ContractError(f"{label}: clip {b} has {n} frames alone but {int(batched.lengths[b])} batched")
            _close(label, f"clip {b} alone vs batched", _frames(batched.hidden, b, n), _frames(alone.hidden, 0, n))


def _adapter_input(model, lengths: list[int], garbage: float | None = 7.0, seed: int = 0) -> tuple:
    """Encoder-like frames for the host's adapter: ``[B, T, C]`` (``[B, L, T, C]`` for stacked layers), garbage in
    the padding."""
    encoder = model.encoder
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        probe = encoder(*_pad(_waves(encoder.sampling_rate, (0.5,))))
    shape = probe.hidden.shape
    layers = (shape[1],) if probe.hidden.dim() == 4 else ()
    hidden = torch.randn((len(lengths), *layers, max(lengths), shape[-1]), generator=generator)
    for b, n in enumerate(lengths):
        if garbage is not None:
            (hidden[b, :, n:] if layers else hidden[b, n:]).fill_(garbage)
    return hidden, torch.tensor(lengths)


def _adapter_batch(host: Host, model) -> None:
    adapter, label = host.component(model), f"adapter {host.name!r}"
    lengths = [23, 11]
    hidden, lens = _adapter_input(model, lengths)
    with torch.no_grad():
        batched = adapter(hidden, lens)
        alone = adapter(hidden[1:, ..., : lengths[1], :] if hidden.dim() == 4 else hidden[1:, : lengths[1]],
                        lens[1:])
    n = int(alone.lengths[0])
    if int(batched.lengths[1]) != n:
        raise ContractError(f"{label}: the short clip has {n} embeddings alone but {int(batched.lengths[1])} batched")
    rows_b = batched.units if batched.embeds is None else batched.embeds
    rows_a = alone.units if alone.embeds is None else alone.embeds
    _close(label, "the short clip alone vs batched", rows_b[1, :n], rows_a[0, :n])


def _text_batch(model, prompts: list[str], responses: list[str]) -> dict:
    processor = model.processor
    encoded = [processor.encode(p, num_audio=1, response=r) for p, r in zip(prompts, responses)]
    return processor.collate([torch.zeros(1).numpy()] * len(prompts), encoded)


def _fused_logits(model, fusion, ids, mask, embeds, labels) -> tuple[torch.Tensor, torch.Tensor]:
    llm = model.llm
    try:
        fused = fusion.fuse(llm, ids, mask, embeds, labels=labels, padding_side="right")
        if llm.is_encoder_decoder:
            fused.labels = labels[:, :1].clone().fill_(llm.pad_token_id)  # one decoder step is enough
        out = llm(fused.inputs_embeds, fused.attention_mask, labels=fused.labels, **fused.extra)
    finally:
        fusion.release()
    return out.logits, fused.attention_mask


def _fusion_inputs(model, generator) -> list[torch.Tensor]:
    """Audio for two rows: float embeddings ``[T_i, D]``, or unit ids ``[T_i]`` for a token-space fusion."""
    lengths = [9, 4]
    num_units = getattr(model.fusion, "num_units", None)
    if num_units:
        return [torch.randint(0, num_units, (n,), generator=generator) for n in lengths]
    return [torch.randn(n, model.llm.hidden_size, generator=generator) for n in lengths]


def _fusion_batch(host: Host, model) -> None:
    fusion, label = host.component(model), f"fusion {host.name!r}"
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # open zero-initialised gates: the audio must matter for the check to mean anything
        for param in fusion.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    embeds = _fusion_inputs(model, generator)
    batch = _text_batch(model, ["a much longer instruction, padded past the other", "hi"], ["one two", "x"])
    with torch.no_grad():
        logits, mask = _fused_logits(model, fusion, batch["input_ids"], batch["attention_mask"], embeds,
                                     batch["labels"])
        row = slice(1, 2)
        alone_ids = batch["input_ids"][row, : int(batch["attention_mask"][1].sum())]
        alone, alone_mask = _fused_logits(model, fusion, alone_ids, torch.ones_like(alone_ids), embeds[1:],
                                          batch["labels"][row, : alone_ids.shape[1]])
    n = int(alone_mask[0].sum())
    if int(mask[1].sum()) != n:
        raise ContractError(f"{label}: the short row has {n} positions alone but {int(mask[1].sum())} batched")
    _close(label, "the short row's logits alone vs batched", logits[1, :n], alone[0, :n])
    _fusion_decoding(model, label)


def _fusion_decoding(model, label: str) -> None:
    """Step-wise decoding (``slmzoo serve``'s continuous batching): a row that joins a running batch, and one that
    leaves it, get the logits they get decoded alone, the same tokens fed (whatever state the fusion keeps)."""
    from slmzoo.decoding import DecodingBatch, supports_cache

    if not getattr(model, "supports_stepwise_decoding", lambda: False)():
        return
    waves = [w.numpy() for w in _waves(model.sampling_rate)]
    with torch.no_grad():
        alone = []
        for wave in waves:
            batch = model.prefill([wave])
            if not supports_cache(batch.cache):  # served through generate: nothing to check
                model.fusion.release()
                return
            logits = [batch.logits[0]]
            for _ in range(2):
                batch.step(model.llm, batch.logits.argmax(-1))
                logits.append(batch.logits[0])
            model.fusion.release()
            alone.append(torch.stack(logits))
        tokens = [a.argmax(-1) for a in alone]  # what each row is fed, alone and together
        batch = model.prefill([waves[0]])
        first = [batch.logits[0]]
        batch.step(model.llm, tokens[0][:1])
        batch = DecodingBatch.concat([batch, model.prefill([waves[1]])])  # the second row joins
        first.append(batch.logits[0])
        second = [batch.logits[1]]
        batch.step(model.llm, torch.stack([tokens[0][1], tokens[1][0]]))
        first.append(batch.logits[0])
        second.append(batch.logits[1])
        batch.select([1])  # the first row leaves
        batch.step(model.llm, tokens[1][1:2])
        second.append(batch.logits[0])
        model.fusion.release()
    _close(label, "a row decoded step by step, the second row joining it, vs alone", torch.stack(first), alone[0])
    _close(label, "a row joining a running batch and staying after the other left, vs alone", torch.stack(second),
           alone[1])


def _llm_batch(host: Host, model) -> None:
    llm, label = host.component(model), f"llm {host.name!r}"
    generator = torch.Generator().manual_seed(0)
    lengths = [11, 5]
    embeds = torch.randn(len(lengths), max(lengths), llm.hidden_size, generator=generator)
    mask = torch.tensor([[1] * n + [0] * (max(lengths) - n) for n in lengths])
    labels = None
    if llm.is_encoder_decoder:
        labels = torch.full((len(lengths), 1), llm.pad_token_id)
    with torch.no_grad():
        batched = llm(embeds, mask, labels=labels).logits
        alone = llm(embeds[1:, : lengths[1]], mask[1:, : lengths[1]],
                    labels=None if labels is None else labels[1:]).logits
    n = alone.shape[1]
    _close(label, "the short sequence alone vs batched", batched[1, :n], alone[0])


def assert_batch_invariant(host: Host, tmp_path=None) -> None:
    """A clip's (row's) output does not depend on its batch companions or on the padding."""
    if host.card is None or host.kind not in _BATCH:
        return
    _BATCH[host.kind](host, host.build())


_BATCH: dict[str, Callable] = {"encoder": _encoder_batch, "adapter": _adapter_batch, "fusion": _fusion_batch,
                               "llm": _llm_batch}


# -- bad input ---------------------------------------------------------------------------------------------
def _refused(label: str, what: str, call: Callable, *needles: str) -> None:
    try:
        call()
    except ValueError as error:
        text = str(error)
        missing = [n for n in needles if n.lower() not in text.lower()]
        if missing:
            raise ContractError(f"{label}: {what} is refused, but the message does not name {missing}: {text}") \
                from None
        return
    except Exception as error:  # noqa: BLE001 - the point is which type
        raise ContractError(f"{label}: {what} raises {type(error).__name__} ({error}); expected a ValueError that "
                            "names the input") from None
    raise ContractError(f"{label}: {what} is accepted; it must be refused")


def _encoder_bad_input(host: Host, model, component, label: str) -> None:
    audio, lengths = _pad(_waves(component.sampling_rate, (0.8, 0.8)))
    stereo = torch.stack([audio, audio], dim=1)
    _refused(label, "stereo audio [B, 2, S]", lambda: component(stereo, lengths), str(list(stereo.shape)))
    nan = audio.clone()
    nan[1, 100] = float("nan")
    _refused(label, "a NaN sample in clip 1", lambda: component(nan, lengths), "nan", "1")


def _adapter_bad_input(host: Host, model, component, label: str) -> None:
    flat = torch.randn(2, 7)
    _refused(label, "frames of shape [2, 7]", lambda: component(flat, torch.tensor([7, 5])), "[2, 7]")


def _fusion_bad_input(host: Host, model, component, label: str) -> None:
    batch = _text_batch(model, ["a", "b"], ["1", "2"])
    embeds = _fusion_inputs(model, torch.Generator().manual_seed(0))[:1]
    _refused(label, "2 audio tags with 1 clip", lambda: _fused_logits(
        model, component, batch["input_ids"], batch["attention_mask"], embeds, batch["labels"]), "audio tag")


_BAD_INPUT: dict[str, Callable] = {"encoder": _encoder_bad_input, "adapter": _adapter_bad_input,
                                   "fusion": _fusion_bad_input}


def assert_rejects_bad_input(host: Host, tmp_path=None) -> None:
    """Encoders refuse multi-channel audio and NaN samples naming the clip; adapters refuse frames of the wrong
    rank naming the shape; fusions refuse a batch whose audio count differs from its audio tags. (A language
    model's input is the fusion's output: nothing a user hands it directly.)"""
    if host.card is None or host.kind not in _BAD_INPUT:
        return
    model = host.build()
    with torch.no_grad():
        _BAD_INPUT[host.kind](host, model, host.component(model), f"{host.kind} {host.name!r}")


# -- saving and loading ------------------------------------------------------------------------------------
def _outputs(host: Host, model) -> list[torch.Tensor]:
    """What the component computes on fixed inputs (its state dict when the kind has no fixed forward here)."""
    component = host.component(model)
    torch.manual_seed(0)
    with torch.no_grad():
        if host.kind == "encoder":
            return [component(*_pad(_waves(component.sampling_rate))).hidden]
        if host.kind == "adapter":
            out = component(*_adapter_input(model, [9, 6]))
            return [out.units if out.embeds is None else out.embeds]
        if host.kind == "llm":
            embeds = torch.randn(2, 6, component.hidden_size, generator=torch.Generator().manual_seed(0))
            labels = torch.full((2, 1), component.pad_token_id) if component.is_encoder_decoder else None
            return [component(embeds, torch.ones(2, 6, dtype=torch.long), labels=labels).logits]
    return [t.clone() for t in component.state_dict().values()]


def assert_standalone_roundtrip(host: Host, tmp_path: Path) -> None:
    """A full save of the host, moved away from where it was written, loads back to the same weights and
    outputs: the component rebuilds from the saved card alone."""
    from slmzoo.saving import load_pretrained

    label = f"{host.kind} {host.name!r}"
    if host.card is None:
        return _roundtrip_alone(host)
    model = host.build()
    written, moved = Path(tmp_path) / "written", Path(tmp_path) / "moved"
    model.save_pretrained(written)
    shutil.move(str(written), moved)
    again = load_pretrained(moved)
    mine, theirs = host.component(model).state_dict(), host.component(again).state_dict()
    if mine.keys() != theirs.keys():
        raise ContractError(f"{label}: reloaded with other tensors: {sorted(set(mine) ^ set(theirs))[:5]}")
    for key in mine:
        if not torch.equal(mine[key], theirs[key]):
            raise ContractError(f"{label}: tensor {key} differs after save and load")
    for a, b in zip(_outputs(host, model), _outputs(host, again)):
        if not torch.equal(a, b):
            raise ContractError(f"{label}: outputs differ after save and load (the saved card does not rebuild it)")


def _roundtrip_alone(host: Host) -> None:
    from slmzoo.card.validate import resolve_block

    component = _standalone(host)
    options = component.standalone_options()
    if options is None:
        return
    block = {"type": host.name, **host.options.model_dump(mode="json"), **json.loads(json.dumps(options))}
    block.pop("pretrained", None)
    _, rebuilt_options = resolve_block(host.kind, block)
    rebuilt = _standalone(Host(host.kind, host.name, options=rebuilt_options))
    try:
        rebuilt.load_state_dict(component.state_dict(), strict=True)
    except RuntimeError as error:
        raise ContractError(f"{host.kind} {host.name!r}: its standalone options rebuild another module: {error}") \
            from None


def assert_strict_loading(host: Host, tmp_path: Path) -> None:
    """A saved model missing one of the component's tensors, or holding one it does not have, is refused with an
    error naming the tensor."""
    from safetensors.torch import load_file, save_file

    from slmzoo.saving import WEIGHTS_FILE, CheckpointError, load_pretrained, seal

    if host.card is None:
        return
    label = f"{host.kind} {host.name!r}"
    model = host.build()
    names = [n for n in model.state_dict() if n.startswith(host.section + ".")]
    if not names:
        return  # nothing of its own to load
    folder = Path(tmp_path) / "saved"
    model.save_pretrained(folder)
    tensors = load_file(folder / WEIGHTS_FILE)
    aliases = {}
    from safetensors import safe_open

    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get("slmzoo_aliases", "{}"))
    stored = [n for n in names if n in tensors]
    if not stored:
        return  # tied to another component's tensors
    dropped = stored[0]
    cases = {"missing": ({k: v for k, v in tensors.items() if k != dropped}, dropped),
             "unexpected": ({**tensors, f"{host.section}.not_a_tensor_of_it": torch.zeros(1)},
                            f"{host.section}.not_a_tensor_of_it")}
    for what, (edited, name) in cases.items():
        save_file(edited, str(folder / WEIGHTS_FILE),
                  metadata={"slmzoo_aliases": json.dumps({k: v for k, v in aliases.items() if v in edited})})
        seal(folder)  # a consistent folder: the refusal must come from the tensor names, not the file hashes
        try:
            load_pretrained(folder)
        except CheckpointError as error:
            if name not in str(error):
                raise ContractError(f"{label}: a {what} tensor is refused without naming {name}: {error}") from None
            continue
        raise ContractError(f"{label}: a checkpoint with a {what} tensor ({name}) loads; loading must be strict")


_CHECKS: dict[str, Callable] = {"kind": assert_is_of_kind, "meta": assert_meta_build, "batch": assert_batch_invariant,
                                "bad_input": assert_rejects_bad_input, "roundtrip": assert_standalone_roundtrip,
                                "strict": assert_strict_loading}
