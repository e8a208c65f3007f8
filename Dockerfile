# megamid on NVIDIA's PyTorch container (CUDA, cuDNN, NCCL, apex and Transformer Engine included).
#
#   docker build -t megamid:latest .
#   docker run --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
#       -v $PWD:/workspace/run -w /workspace/run megamid:latest \
#       megamid plan /opt/megamid/examples/llama3_8b_128k/recipe.yaml --gpu h100-80gb --no-files
#   docker run --gpus all ... megamid:latest make -C /opt/megamid gpu-check     # one-GPU acceptance run
#   (multi-node: examples/llama3_8b_128k/run.sh or sbatch.sh inside the container)
#
# The pins go together: NGC 25.11 (torch 2.10, CUDA 13.0) ships Transformer Engine 2.9, and megatron-core
# 0.16.1 supports TE >= 2.9, < 2.12; the build fails if the image's TE is outside that range.
# MEGAMID_CUDA_ARCHS picks the GPU architectures of the CUDA kernels (80: A100, 90: H100/H200, 100: B200).
FROM nvcr.io/nvidia/pytorch:25.11-py3

ARG MEGATRON_CORE_VERSION=0.16.1
ARG TE_MIN=2.9
ARG TE_BELOW=2.12
ARG MEGAMID_CUDA_ARCHS="80;90;100"
ENV MEGAMID_BUILD_CUDA=1 \
    MEGAMID_CUDA_ARCHS=${MEGAMID_CUDA_ARCHS} \
    PIP_NO_CACHE_DIR=1

WORKDIR /opt/megamid
# Dependencies first (a layer that survives source edits). --no-deps for megatron-core: its requirements
# (torch, numpy, packaging) come with the image, and pip must not replace the image's torch build.
RUN pip install --no-deps "megatron-core==${MEGATRON_CORE_VERSION}" \
 && pip install sentencepiece tokenizers pyyaml psutil "pybind11>=2.10"
COPY . /opt/megamid
# --no-build-isolation: build against the image's torch and CUDA toolkit (nvcc is on PATH), not a fresh wheel;
# --no-deps: everything megamid needs is installed above.
RUN pip install --no-build-isolation --no-deps .
# From outside the source tree, so that the installed package (with its compiled modules) is what imports.
RUN cd / && python /opt/megamid/tools/container_check.py --source-tree /opt/megamid --cuda-kernels \
      --megatron-core "${MEGATRON_CORE_VERSION}" --te-min "${TE_MIN}" --te-below "${TE_BELOW}"

WORKDIR /workspace
CMD ["megamid", "--help"]
