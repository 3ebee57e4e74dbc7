"""The Hugging Face Hub: sources (``hf-hub:org/name@rev``, ``local-dir:PATH``) resolved in one place, and pushing.

- :mod:`slmzoo.hub.sources`: parsing, resolution through the huggingface_hub cache, backbone pinning.
- :mod:`slmzoo.hub.push`: ``push_to_hub`` (staged saved model, pinned backbones, model card, one commit).
- :mod:`slmzoo.hub.readme`: the ``README.md`` model card.

Nothing here imports torch at import time (``show`` and ``diff`` of an ``hf-hub:`` card stay torch-free).
"""

from slmzoo.hub.push import PushPlan, push_to_hub
from slmzoo.hub.sources import (
    HUB_PREFIX,
    LOCAL_PREFIX,
    HubError,
    HubSource,
    NotAnSlmzooModelError,
    parse,
    parse_pretrained,
    parse_repo,
    resolve,
    snapshot,
)

__all__ = ["HUB_PREFIX", "LOCAL_PREFIX", "HubError", "HubSource", "NotAnSlmzooModelError", "PushPlan", "parse",
           "parse_pretrained", "parse_repo", "push_to_hub", "resolve", "snapshot"]
