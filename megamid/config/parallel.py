"""The parallel layout: tensor, pipeline (optionally interleaved), context and data parallelism."""

from dataclasses import dataclass
from typing import Optional

from megamid.config.base import check_choice, check_positive, fail


@dataclass(frozen=True)
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: Optional[int] = None   # model chunks per pipeline rank (interleaved 1F1B)
    context_parallel_size: int = 1
    cp_comm: str = "allgather"                                   # allgather | ring (megamid attention without TE)
    use_distributed_optimizer: bool = False
    sequence_parallel: bool = False

    def __post_init__(self):
        for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size"):
            check_positive(f"parallel.{name}", getattr(self, name))
        vpp = self.virtual_pipeline_model_parallel_size
        if vpp is not None:
            check_positive("parallel.virtual_pipeline_model_parallel_size", vpp)
            if self.pipeline_model_parallel_size < 2 and vpp > 1:
                fail("parallel.virtual_pipeline_model_parallel_size", vpp,
                     "interleaving needs parallel.pipeline_model_parallel_size >= 2 (or leave it null)")
        check_choice("parallel.cp_comm", self.cp_comm, ("allgather", "ring"))
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            fail("parallel.sequence_parallel", True, "needs parallel.tensor_model_parallel_size > 1")

    @property
    def model_parallel_size(self) -> int:
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size * self.context_parallel_size

    @property
    def num_model_chunks(self) -> int:
        return self.virtual_pipeline_model_parallel_size or 1
