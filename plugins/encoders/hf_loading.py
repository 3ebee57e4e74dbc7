"""Build a transformers backbone three ways: from an inline config (random weights, offline), strictly from a
pretrained checkpoint (hub id or local folder in transformers format), or on the meta device (no weights).

Strict means: a weight the model needs that the checkpoint lacks, one of the backbone's own weights the model does
not know, or a shape mismatch is an error naming every such key. The one thing dropped quietly is what lies outside
the backbone in a task checkpoint (``lm_head.*`` of a ``HubertForCTC``, ``quantizer.*`` of a
``Wav2Vec2ForPreTraining``, ``ctc_head.*`` of a ``ParakeetForCTC``): the encoder is a part of that model by design.

Any encoder wrapping a ``PreTrainedModel`` can use :func:`build_hf_model`, e.g. Whisper with
``build_hf_model(WhisperEncoder, WhisperConfig, ...)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from slmzoo.errors import PretrainedLoadError

if TYPE_CHECKING:
    import torch


def load_config(config_class, pretrained: str | None = None, config: dict[str, Any] | None = None,
                sub_config: str | None = None, convert: Callable[[Any], Any] | None = None):
    """The model config: ``config_class(**config)``, or the checkpoint's config with ``config`` as overrides.

    ``sub_config`` names the attribute holding the backbone's config inside a composite checkpoint (e.g.
    ``encoder_config`` of ``ParakeetCTCConfig``); ``convert`` turns another checkpoint's config into the backbone's
    (Whisper from an audio LLM's tower) or raises saying why it cannot. Overrides that change shapes fail later,
    at loading.
    """
    if pretrained is None:
        if config is None:
            raise PretrainedLoadError("encoder: give pretrained (a hub id or a local folder) or an inline config")
        return config_class(**config)
    from transformers import AutoConfig

    try:
        loaded = AutoConfig.from_pretrained(pretrained)
    except Exception as error:  # offline, a typo, a private repo: say which and how to build without it
        raise PretrainedLoadError(f"encoder.pretrained: cannot read the config of {pretrained!r} ({error}); "
                                  "offline, use a local folder or an inline encoder.config") from None
    backbone = loaded if isinstance(loaded, config_class) else getattr(loaded, sub_config or "", None)
    if not isinstance(backbone, config_class) and convert is not None:
        backbone = convert(loaded)
    if not isinstance(backbone, config_class):
        raise PretrainedLoadError(f"encoder.pretrained: {pretrained!r} is a {type(loaded).__name__} checkpoint, "
                                  f"expected {config_class.__name__}")
    backbone.architectures = loaded.architectures  # tells a task checkpoint from a bare backbone (see below)
    for key, value in (config or {}).items():
        setattr(backbone, key, value)
    return backbone


def load_strict(model_class, pretrained: str, config):
    """``model_class.from_pretrained`` that refuses any missing, unexpected or mismatched weight, naming them."""
    import torch

    try:
        model, info = model_class.from_pretrained(pretrained, config=config, dtype=torch.float32,
                                                  output_loading_info=True, ignore_mismatched_sizes=True)
    except (OSError, EnvironmentError) as error:
        raise PretrainedLoadError(f"encoder.pretrained: cannot load weights of {pretrained!r} ({error})") from None
    prefix = model_class.base_model_prefix + "."
    # A task checkpoint (architectures name another class) carries heads outside the backbone: keys without the
    # backbone's prefix. Keys under the prefix that the model does not know are real mismatches.
    task = any(name != model_class.__name__ for name in (config.architectures or []))
    unexpected = sorted(k for k in info["unexpected_keys"] if not task or k.startswith(prefix))
    problems = [f"missing weight {k}" for k in sorted(info["missing_keys"])]
    problems += [f"unexpected weight {k}" for k in unexpected]
    for mismatch in sorted(info["mismatched_keys"]):  # (key, checkpoint shape, model shape)
        key, *shapes = mismatch if isinstance(mismatch, tuple) else (mismatch,)
        shapes = f": checkpoint {list(shapes[0])}, model {list(shapes[1])}" if len(shapes) == 2 else ""
        problems.append(f"shape mismatch {key}{shapes}")
    if problems:
        raise PretrainedLoadError(f"encoder.pretrained: {pretrained!r} does not fit {model_class.__name__}: "
                                  + "; ".join(problems))
    return model


def build_hf_model(model_class, config_class, *, pretrained: str | None = None,
                   config: dict[str, Any] | None = None, context=None, sub_config: str | None = None):
    """The backbone for a component factory.

    ``context.meta`` (inside ``torch.device('meta')``) or ``context.load_weights=False`` build from a config only:
    the inline one when given (no download: cards carry the published dimensions for offline ``--meta`` builds),
    else the checkpoint's via ``AutoConfig``. Otherwise a pretrained checkpoint loads strictly, its config updated
    by the inline one (fields that change shapes then fail as shape mismatches), and an inline config alone gives
    random weights.
    """
    from slmzoo.builder import context_or_default

    context = context_or_default(context)
    from_config = context.from_config
    if from_config and config is not None:
        pretrained = None
    model_config = load_config(config_class, pretrained, config, sub_config)
    if pretrained is None or from_config:
        model = model_class(model_config)
        # torch.Tensor(...) ignores the device context (HubertModel.masked_spec_embed): move what it allocated.
        return model.to("meta") if context.meta else model
    return load_strict(model_class, pretrained, model_config)


def preprocessor_config(pretrained: str | None, context=None) -> dict[str, Any]:
    """The checkpoint's ``preprocessor_config.json`` (feature extractor settings); ``{}`` when it has none.

    ``{}`` on meta builds too: nothing runs there, and they must not download.
    """
    from slmzoo.builder import context_or_default

    if pretrained is None or context_or_default(context).meta:
        return {}
    path = Path(pretrained) / "preprocessor_config.json"
    if not Path(pretrained).is_dir():
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            path = Path(hf_hub_download(pretrained, "preprocessor_config.json"))
        except EntryNotFoundError:  # a repo without one: the feature extractor's defaults apply
            return {}
        except Exception as error:
            raise PretrainedLoadError(f"encoder.pretrained: cannot read the feature extractor settings of "
                                      f"{pretrained!r} ({error}); offline, use a local folder") from None
    return json.loads(path.read_text()) if path.exists() else {}


def feature_settings(pretrained: str | None, given: dict | None, known, context=None) -> dict[str, Any]:
    """Feature extractor settings: the card's ``feature_extractor`` when given (unknown keys are an error: a
    typo would silently change nothing), else the checkpoint's ``preprocessor_config.json``; only ``known`` keys."""
    if given is not None:
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"encoder.feature_extractor: unknown setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(known)}")
        return dict(given)
    return {k: v for k, v in preprocessor_config(pretrained, context).items() if k in known}


def _download(pretrained: str, keep: Callable[[str], bool]) -> Path:
    """A hub checkpoint's folder. A sharded one downloads only the shards its index maps kept keys to: the LLM
    beside an audio LLM's encoder never leaves the hub."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        try:
            index = json.loads(Path(hf_hub_download(pretrained, "model.safetensors.index.json")).read_text())
        except EntryNotFoundError:  # a single file: nothing to skip
            index = None
        if index is not None:
            shards = sorted({file for key, file in index["weight_map"].items() if keep(key)})
            if not shards:
                raise PretrainedLoadError(f"encoder.pretrained: {pretrained!r} holds none of the weights this "
                                          "encoder reads (check the hub id)")
            return Path(snapshot_download(pretrained, allow_patterns=shards))
        folder = Path(snapshot_download(pretrained, allow_patterns=["*.json", "*.safetensors"]))
        if not any(folder.glob("*.safetensors")):  # older repos ship only pytorch_model.bin
            folder = Path(snapshot_download(pretrained, allow_patterns=["*.json", "*.bin"]))
        return folder
    except PretrainedLoadError:
        raise
    except Exception as error:
        raise PretrainedLoadError(f"encoder.pretrained: cannot download {pretrained!r} ({error}); offline, use "
                                  "a local folder or an inline encoder.config with --meta") from None


def checkpoint_tensors(pretrained: str, keep: Callable[[str], bool] = lambda key: True) -> dict[str, torch.Tensor]:
    """The tensors of a transformers checkpoint (folder or hub id; sharded or not; safetensors or .bin) whose
    key ``keep`` accepts. Safetensors are read key by key and shards without kept keys are skipped, so the parts
    left out (a decoder, an LLM) never leave the disk, nor the hub."""
    import torch

    folder = Path(pretrained) if Path(pretrained).is_dir() else _download(pretrained, keep)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [folder / f for f in sorted({file for key, file in weight_map.items() if keep(key)})]
    else:
        files = sorted(folder.glob("model*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise PretrainedLoadError(f"encoder.pretrained: no model.safetensors or pytorch_model.bin in {folder}")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as reader:
                tensors.update({key: reader.get_tensor(key) for key in reader.keys() if keep(key)})
        else:
            tensors.update({k: v for k, v in torch.load(file, map_location="cpu", weights_only=True).items() if keep(k)})
    return tensors


def under_prefix(tensors: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
    """The tensors under the first of ``prefixes`` that some key starts with, the prefix removed; ``None`` when no
    key does (a bare module's checkpoint)."""
    for prefix in prefixes:
        if any(key.startswith(prefix) for key in tensors):
            return {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
    return None


def tower_tensors(pretrained: str, prefixes: tuple[str, ...], bare: tuple[str, ...]) -> dict[str, "torch.Tensor"]:
    """An encoder's state dict from a checkpoint that holds it under one of ``prefixes`` (a whole model: the first
    prefix found wins) or bare (keys starting with ``bare``). Only those tensors are read; from the hub, only the
    shards holding them are downloaded."""
    tensors = checkpoint_tensors(pretrained, keep=lambda key: key.startswith(prefixes + bare))
    found = under_prefix(tensors, prefixes)
    return found if found is not None else {k: v for k, v in tensors.items() if k.startswith(bare)}


def load_state_strict(module, state: dict[str, torch.Tensor], source: str, what: str) -> None:
    """``module.load_state_dict(state)`` refusing any missing, unexpected or mismatched tensor, naming each."""
    expected = module.state_dict()
    problems = [f"missing weight {k}" for k in sorted(set(expected) - set(state))]
    problems += [f"unexpected weight {k}" for k in sorted(set(state) - set(expected))]
    problems += [f"shape mismatch {k} {tuple(v.shape)} (model {tuple(expected[k].shape)})"
                 for k, v in sorted(state.items()) if k in expected and v.shape != expected[k].shape]
    if problems:
        raise PretrainedLoadError(f"encoder.pretrained: {source!r} does not fit {what}: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)
