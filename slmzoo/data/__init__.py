"""Data: manifests (Lhotse and NeMo JSONL) -> duration-bucketed batches for ``SpeechLM``."""

from slmzoo.data.dataset import SpeechDataset, load_waveform, prompt_and_response
from slmzoo.data.issues import DataError, DataIssues
from slmzoo.data.loader import make_loader, make_sampler
from slmzoo.data.manifests import eval_cuts, open_manifest, parse_manifest_spec, training_cuts

__all__ = ["SpeechDataset", "load_waveform", "prompt_and_response", "DataError", "DataIssues", "make_loader",
           "make_sampler", "eval_cuts", "open_manifest", "parse_manifest_spec", "training_cuts"]
