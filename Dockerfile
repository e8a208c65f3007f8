# megamid on NVIDIA's PyTorch container (CUDA, cuDNN, NCCL and Transformer Engine included).
#
#   docker build -t megamid:latest .
#   docker run --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
#       -v $PWD:/workspace/run -w /workspace/run megamid:latest \
#       megamid plan /opt/megamid/examples/llama3_8b_128k/recipe.yaml
#   (multi-node: examples/llama3_8b_128k/run.sh or sbatch.sh inside the container)
#
# MEGAMID_CUDA_ARCHS picks the GPU architectures of the CUDA kernels (80: A100, 90: H100/H200).
FROM nvcr.io/nvidia/pytorch:25.04-py3

ARG MEGAMID_CUDA_ARCHS="80;90"
ENV MEGAMID_BUILD_CUDA=1 \
    MEGAMID_CUDA_ARCHS=${MEGAMID_CUDA_ARCHS} \
    PIP_NO_CACHE_DIR=1

WORKDIR /opt/megamid
# Dependencies first (a layer that survives source edits); torch and TE come with the image.
RUN pip install "megatron-core>=0.16.1,<0.20" sentencepiece pyyaml psutil "pybind11>=2.10"
COPY . /opt/megamid
# --no-build-isolation: build against the container's torch and CUDA toolkit (nvcc is on PATH), not a fresh wheel.
# (No GPU driver at build time: check that the CUDA extension was built, without importing it.)
RUN pip install --no-build-isolation . \
 && python -c "import importlib.util as u, megamid._C; assert u.find_spec('megamid._cuda'), 'CUDA kernels not built'"

WORKDIR /workspace
CMD ["megamid", "--help"]
