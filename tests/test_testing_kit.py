"""The contract-test kit itself: it passes a correct component and catches each broken contract."""

from __future__ import annotations

import pytest
from torch import nn

import slmzoo
import slmzoo.plugins
from slmzoo.components import Adapter, AdapterOutput, zero_padding
from slmzoo.registry import ComponentOptions, ComponentSpec
from slmzoo.testing import ContractError, check_component, host_for


class Options(ComponentOptions):
    pass


class GoodAdapter(Adapter):
    """Linear per frame, padding zeroed: passes everything."""

    def __init__(self, options, context):
        super().__init__()
        self.proj = nn.Linear(context.encoder_dim, context.llm_dim)
        self.output_dim = context.llm_dim

    def forward(self, hidden, lengths):
        if hidden.dim() != 3:
            raise ValueError(f"adapter good: expected frames [B, T, C], got {list(hidden.shape)}")
        return AdapterOutput(zero_padding(self.proj(hidden), lengths), lengths)


class LeakyAdapter(GoodAdapter):
    """Adds the mean over every frame, padding included: a clip's output depends on its batch."""

    def forward(self, hidden, lengths):
        out = super().forward(hidden, lengths)
        out.embeds = zero_padding(out.embeds + out.embeds.mean(dim=1, keepdim=True) * 0 + hidden.mean(dim=(1, 2))
                                  [:, None, None], lengths)
        return out


class Untyped(nn.Module):
    """Works, but is no Adapter."""

    def __init__(self, options, context):
        super().__init__()
        self.proj = nn.Linear(context.encoder_dim, context.llm_dim)

    def forward(self, hidden, lengths):
        return AdapterOutput(zero_padding(self.proj(hidden), lengths), lengths)


class Careless(GoodAdapter):
    """Indexes frames without checking their rank: the error it raises says nothing of the input."""

    def forward(self, hidden, lengths):
        return AdapterOutput(zero_padding(self.proj(hidden[:, :, :]), lengths), lengths)


def forgetful_fusion(options, context):
    """Gated cross-attention that hands its audio memory to a decoding batch but ignores it when given back: every
    row of a batch attends to the memory of the last prefill."""
    from slmzoo_plugins.fusion.gated_xattn import GatedCrossAttentionFusion

    class Forgetful(GatedCrossAttentionFusion):
        def use_decoding_state(self, state):
            pass

    return Forgetful(options, context)


class KitPlugin:
    @staticmethod
    @slmzoo.hookimpl
    def slmzoo_register_components(register):
        from slmzoo_plugins.fusion.specs import GatedXAttnOptions

        for name, cls in (("kit_good", GoodAdapter), ("kit_leaky", LeakyAdapter), ("kit_untyped", Untyped),
                          ("kit_careless", Careless)):
            register(ComponentSpec(kind="adapter", name=name, description="kit test", options=Options,
                                   factory=f"tests.test_testing_kit:{cls.__name__}", example={}))
        register(ComponentSpec(kind="fusion", name="kit_forgetful", description="kit test", options=GatedXAttnOptions,
                               factory="tests.test_testing_kit:forgetful_fusion", example={"num_heads": 4}))


@pytest.fixture(autouse=True)
def kit_plugin():
    slmzoo.plugins.register_plugin(KitPlugin, "kit_plugin")
    yield
    slmzoo.plugins.host().unregister("kit_plugin")


def test_a_correct_component_passes_every_check(tmp_path):
    host = host_for("adapter", "kit_good")
    assert host.card is not None and host.card.data["adapter"]["type"] == "kit_good"  # the example in a tiny preset
    check_component("adapter", "kit_good", "all", tmp_path)


@pytest.mark.parametrize(("name", "check", "message"), [
    ("kit_leaky", "batch", "leaks in"),
    ("kit_untyped", "kind", "does not subclass slmzoo.components.Adapter"),
    ("kit_careless", "bad_input", "expected a ValueError that names the input"),
])
def test_a_broken_contract_is_caught_and_explained(name, check, message, tmp_path):
    with pytest.raises(ContractError, match=message):
        check_component("adapter", name, check, tmp_path)


def test_a_fusion_whose_rows_lose_their_memory_in_a_running_batch_is_caught(tmp_path):
    with pytest.raises(ContractError, match="joining .* vs alone"):
        check_component("fusion", "kit_forgetful", "batch", tmp_path)


def test_a_component_without_host_or_example_is_told_what_to_add():
    class NoExample:
        @staticmethod
        @slmzoo.hookimpl
        def slmzoo_register_components(register):
            register(ComponentSpec(kind="adapter", name="kit_bare", description="kit test", options=Options,
                                   factory="tests.test_testing_kit:GoodAdapter"))

    slmzoo.plugins.register_plugin(NoExample, "kit_bare_plugin")
    try:
        with pytest.raises(ContractError, match="give ComponentSpec\\(example="):
            check_component("adapter", "kit_bare", "kind")
    finally:
        slmzoo.plugins.host().unregister("kit_bare_plugin")
