"""Run ``slmzoo`` under ``torchrun`` with Accelerate in FSDP mode on CPU processes (gloo): a test harness only.

Accelerate turns FSDP on only for accelerator devices (on CPU it falls back to plain multi-process data
parallelism), yet FSDP2 itself shards on CPU. So that CI can exercise the training loop's FSDP paths (gathered
checkpoints, sharded optimizer state, validation with every rank) without a GPU, this launcher sets the state
Accelerate would have set on GPUs; the loop itself is unchanged. Environment as ``accelerate launch`` sets it:
``ACCELERATE_USE_FSDP=true FSDP_VERSION=2 ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 tests/fsdp_on_cpu.py
train ...``.
"""

from __future__ import annotations

import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_accelerator_state_init = AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        # AcceleratorState copies PartialState's fields each time it is constructed: set it there too.
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


AcceleratorState.__init__ = _fsdp_on_cpu

if __name__ == "__main__":
    from slmzoo.cli.main import main

    main(sys.argv[1:])
