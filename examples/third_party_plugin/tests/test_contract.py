"""The plugin's own tests: slmzoo's contract-test kit on the mean_pool adapter (inside the tiny preset of this
plugin's salm_mean_pool card), plus what is particular to mean pooling."""

import pytest
import torch

import slmzoo
from slmzoo.testing import CHECKS, check_component


@pytest.mark.parametrize("check", CHECKS)
def test_mean_pool_keeps_slmzoos_contracts(check, tmp_path):
    check_component("adapter", "mean_pool", check, tmp_path)


def test_windows_average_real_frames_only():
    model = slmzoo.build(slmzoo.load_card("salm_mean_pool", preset="tiny"))
    adapter = model.adapter.eval()
    hidden = torch.randn(1, 5, adapter.norm.normalized_shape[0])
    out = adapter(hidden, torch.tensor([3]))  # window 2: frames (0, 1) and (2,), padding ignored
    assert out.lengths.tolist() == [2]
    alone = adapter(hidden[:, :3], torch.tensor([3]))
    torch.testing.assert_close(out.embeds[0, :2], alone.embeds[0, :2])
