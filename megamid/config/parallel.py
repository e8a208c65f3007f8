"""The parallel layout: tensor, pipeline (optionally interleaved), context and data parallelism."""

from dataclasses import dataclass
from typing import Optional

from megamid.config.base import ConfigError, check_choice, check_positive, fail

CP_COMMS = ("allgather", "ring", "p2p", "a2a", "a2a+p2p")


@dataclass(frozen=True)
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: Optional[int] = None   # model chunks per pipeline rank (interleaved 1F1B)
    context_parallel_size: int = 1
    # allgather | ring (= p2p): megamid's attention and TE's; a2a | a2a+p2p: TE's attention only
    cp_comm: str = "allgather"
    cp_a2a_size: Optional[int] = None                            # a2a+p2p: the all-to-all group inside CP
    use_distributed_optimizer: bool = False
    sequence_parallel: bool = False
    tp_comm_overlap: bool = False      # TE userbuffers overlap TP communication with GEMMs (needs TE, SP, TP > 1)

    def __post_init__(self):
        for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size"):
            check_positive(f"parallel.{name}", getattr(self, name))
        vpp = self.virtual_pipeline_model_parallel_size
        if vpp is not None:
            check_positive("parallel.virtual_pipeline_model_parallel_size", vpp)
            if self.pipeline_model_parallel_size < 2 and vpp > 1:
                fail("parallel.virtual_pipeline_model_parallel_size", vpp,
                     "interleaving needs parallel.pipeline_model_parallel_size >= 2 (or leave it null)")
        check_choice("parallel.cp_comm", self.cp_comm, CP_COMMS)
        cp, inner = self.context_parallel_size, self.cp_a2a_size
        if inner is not None:
            check_positive("parallel.cp_a2a_size", inner)
            if self.cp_comm != "a2a+p2p":
                fail("parallel.cp_a2a_size", inner, "only cp_comm: a2a+p2p splits CP into groups (or leave it null)")
            if cp > 1 and (inner < 2 or inner >= cp or cp % inner):
                fail("parallel.cp_a2a_size", inner, f"a divisor of context_parallel_size={cp} between 2 and {cp // 2}")
        elif self.cp_comm == "a2a+p2p" and cp > 1:
            fail("parallel.cp_a2a_size", None, f"cp_comm a2a+p2p needs the all-to-all group size, a divisor of "
                 f"context_parallel_size={cp} between 2 and {cp // 2} (p2p runs across the groups)")
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            fail("parallel.sequence_parallel", True, "needs parallel.tensor_model_parallel_size > 1")
        if self.tp_comm_overlap and not self.sequence_parallel:
            fail("parallel.tp_comm_overlap", True, "needs parallel.sequence_parallel: true (and TP > 1)")

    @property
    def model_parallel_size(self) -> int:
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size * self.context_parallel_size

    @property
    def hierarchical_context_parallel_sizes(self) -> Optional[list]:
        """megatron's [a2a size, p2p size] for cp_comm a2a+p2p, else None."""
        if self.cp_comm != "a2a+p2p" or self.context_parallel_size == 1:
            return None
        return [self.cp_a2a_size, self.context_parallel_size // self.cp_a2a_size]

    @property
    def num_model_chunks(self) -> int:
        return self.virtual_pipeline_model_parallel_size or 1


def check_layout(model, parallel: ParallelConfig, where: str = "parallel") -> None:
    """Checks `model` (a ModelConfig) divides over the layout; errors name the field, the value and what is valid."""
    tp, pp = parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size
    for name, value, what in (("num_attention_heads", model.num_attention_heads, "heads"),
                              ("num_query_groups", model.query_groups, "query groups"),
                              ("vocab_size", model.vocab_size, "the vocabulary"),
                              ("ffn_hidden_size", model.ffn_size, "the FFN size")):
        if value % tp:
            raise ConfigError(f"model.{name}={value} is invalid with {where}.tensor_model_parallel_size={tp}: "
                              f"{what} must be divisible by TP")
    stages = pp * parallel.num_model_chunks
    if model.num_layers % stages:
        raise ConfigError(f"model.num_layers={model.num_layers} is invalid with {where}.pipeline_model_parallel_size"
                          f"={pp} x virtual={parallel.num_model_chunks}: layers must divide evenly into {stages} stages")
