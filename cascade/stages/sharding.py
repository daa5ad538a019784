"""Fully sharded data parallel training of a stage: FSDP2 (`torch.distributed.fsdp.fully_shard`)
through Lightning's `ModelParallelStrategy`.

Why FSDP2 and not Lightning's `FSDPStrategy` (FSDP1): in this torch (2.14) FSDP1 refuses a CPU
module, so it cannot be tested on the CPU machines the project runs its tests on:

    RuntimeError: FSDP needs a non-CPU accelerator device, but no accelerator device is detected.
    (torch/distributed/fsdp/_init_utils.py:390, `_init_device_handle`)

while `fully_shard` shards over a gloo process group on CPU as over NCCL on GPUs (reduce-scatter
of the gradients, all-gather of the parameters), with DTensor parameters that the fused AdamW,
`clip_grad_norm_` and `torch.distributed.checkpoint.state_dict` all understand.

The sharding unit is the UNet's `UNetBlock` (one residual block with its attention layers, or
a resampling layer), then the UNet itself for what is left (embeddings, input and output
convolutions): the parameters of one block are gathered just before it runs and freed after it
(Zhao et al. 2023, PyTorch FSDP, sec. 3.2: one FSDP unit per transformer block). The frozen
text encoder is outside the module tree (`DiffusionStage.text_encoder`): it is not sharded, not
trained and not checkpointed, as under DDP.

Checkpoints hold the full state (`save_distributed_checkpoint: false`): rank 0 gathers the
weights, the EMA weights and the AdamW moments to CPU memory and writes one `.ckpt`, which every
tool reads as it reads a DDP run's (`cascade export`, `load_stage`, `--ckpt_path last`, the
atomic writer), and which any number of processes can resume from. Sharded (DCP) checkpoints are
refused: Lightning writes everything but the module and optimiser state from rank 0 alone, so the
EMA callback's `current_model_state` would hold rank 0's shards only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from ..nn.unet import UNet, UNetBlock

PARAM_DTYPES = {None: None, "float32": torch.float32, "bfloat16": torch.bfloat16}


class FSDP2Strategy(ModelParallelStrategy):
    """Shard a stage's UNet over every process with FSDP2 (`fully_shard`, ZeRO-3: parameters,
    gradients and AdamW moments each live on one rank only), one unit per `UNetBlock`.

    Args:
        param_dtype: dtype of the gathered parameters for forward and backward: null (their
            own, float32) or "bfloat16" (halves the all-gather traffic and the gathered
            weights' memory; needs `trainer.precision: bf16-mixed`, whose autocast casts the
            activations: FSDP does not cast the inputs, so the noise level 1000 t stays float32).
            The sharded weights the optimiser updates, and the EMA, stay float32.
        reduce_dtype: dtype of the gradient reduce-scatter (null: param_dtype); "float32" keeps
            the gradient average exact up to summation order when param_dtype is bfloat16.
        reshard_after_forward: free each block's gathered parameters after its forward (and
            gather them again in backward: less memory, one more all-gather per block).
        save_distributed_checkpoint: only false (full-state checkpoints, see the module docstring);
            true, like any invalid value here, is a config error (`strategy_problems`).
        process_group_backend, timeout: as in `ModelParallelStrategy` (None: nccl on GPUs, gloo on CPU).

    The data-parallel size is the world size (nodes x processes per node); there is no tensor
    parallelism.
    """

    def __init__(
        self,
        param_dtype: str | None = None,
        reduce_dtype: str | None = "float32",
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = False,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=False,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self.param_dtype = param_dtype
        self.reduce_dtype = reduce_dtype
        self.reshard_after_forward = reshard_after_forward
        self.save_distributed_checkpoint = save_distributed_checkpoint

    def setup_environment(self) -> None:
        problems = self.strategy_problems(self.precision_plugin.precision)
        if problems:
            raise ValueError("; ".join(f"{key}: {message}" for key, message in problems))
        # Every process is one data-parallel replica (ModelParallelStrategy's "auto" would make
        # the processes of a node tensor-parallel).
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    @property
    def mixed_precision_policy(self) -> MixedPrecisionPolicy:
        """FSDP2's policy: gathered parameters in `param_dtype`, gradients reduced in
        `reduce_dtype`, inputs left as they are (autocast casts them)."""
        return MixedPrecisionPolicy(
            param_dtype=PARAM_DTYPES[self.param_dtype],
            reduce_dtype=PARAM_DTYPES[self.reduce_dtype],
            cast_forward_inputs=False,
        )

    def shard(self, module: torch.nn.Module) -> None:
        """Shard `module` (a stage, or the EMA callback's copy of it) in place over the
        data-parallel mesh: each `UNetBlock`, then every UNet; a module already sharded is left
        as it is (Lightning calls `configure_model` more than once)."""
        shard_unet_blocks(module, self.device_mesh["data_parallel"], self.mixed_precision_policy,
                          self.reshard_after_forward)

    def strategy_problems(self, precision: str | None) -> list[tuple[str, str]]:
        """(key, message) for each setting of this strategy that is invalid or does not go with
        the trainer's `precision` (checked by `cascade fit` before anything starts, and again when
        the processes start). The constructor accepts anything: jsonargparse would replace its
        error with one about the other type `trainer.strategy` accepts (a name)."""
        prefix = "trainer.strategy.init_args"
        problems = [
            (f"{prefix}.{key}", f"must be one of {list(PARAM_DTYPES)}, got {value!r}")
            for key, value in (("param_dtype", self.param_dtype), ("reduce_dtype", self.reduce_dtype))
            if value not in PARAM_DTYPES
        ]
        if self.save_distributed_checkpoint:
            message = ("only false is supported: the EMA weights and every tool that reads a checkpoint (export, "
                       "resume) use the full-state .ckpt")
            problems.append((f"{prefix}.save_distributed_checkpoint", message))
        if self.param_dtype == "bfloat16" and precision not in ("bf16-mixed", "bf16"):
            message = f"bfloat16 needs trainer.precision: bf16-mixed (its autocast casts the activations), got {precision!r}"
            problems.append((f"{prefix}.param_dtype", message))
        return problems


def shard_unet_blocks(
    module: torch.nn.Module, mesh: DeviceMesh, policy: MixedPrecisionPolicy, reshard_after_forward: bool
) -> None:
    """`fully_shard` every `UNetBlock` of `module`, then every `UNet` (its remaining parameters),
    over `mesh`; nothing when `module` is already sharded."""
    if is_sharded(module):
        return
    options: dict[str, Any] = {"mesh": mesh, "mp_policy": policy, "reshard_after_forward": reshard_after_forward}
    for block in [m for m in module.modules() if isinstance(m, UNetBlock)]:
        fully_shard(block, **options)
    for unet in [m for m in module.modules() if isinstance(m, UNet)]:
        fully_shard(unet, **options)


def is_sharded(module: torch.nn.Module) -> bool:
    """Whether any parameter of `module` is a DTensor (sharded by FSDP2)."""
    return any(isinstance(p, DTensor) for p in module.parameters())


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a view: in-place changes reach the parameter); any other
    tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole state of a sharded `module` on CPU, gathered on rank 0 (empty on the others);
    every rank must call it."""
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state (as `full_state_dict` gives, present on every rank) into a sharded
    `module`: each rank keeps its own shard of every tensor, without communication."""
    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, strict=True))
