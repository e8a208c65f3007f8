"""pytest tests/attention/test_attention_merge.py

The attention merge op (csrc/attention): the C++ kernel in megamid._C and the PyTorch reference against
float64 math over a grid of shapes and empty (-inf) blocks, the closed-form gradient against autograd,
backend selection by MEGAMID_KERNELS, and (gpu-marked) the CUDA kernel against the reference.
"""

import itertools
import math

import pytest
import torch

from megamid.kernels import attention_merge as am
from megamid.kernels.attention_merge import kernel_backend, merge_attention, merge_attention_reference


def _float64_merge(o1, l1, o2, l2):
    """Per-row math in Python floats: the independent oracle."""
    out, lse = torch.zeros_like(o1, dtype=torch.float64), torch.zeros_like(l1, dtype=torch.float64)
    for idx in itertools.product(*(range(n) for n in l1.shape)):
        a, b = float(l1[idx]), float(l2[idx])
        if a == b == -math.inf:
            lse[idx] = -math.inf
            continue
        m = max(a, b)
        total = math.exp(a - m) + math.exp(b - m)
        lse[idx] = m + math.log(total)
        wa, wb = math.exp(a - lse[idx]), math.exp(b - lse[idx])
        out[idx] = (wa * o1[idx].double() if wa else 0) + (wb * o2[idx].double() if wb else 0)
    return out, lse


def _parts(shape, dtype, seed=0, empty=True):
    g = torch.Generator().manual_seed(seed)
    o1, o2 = (torch.randn(*shape, generator=g).to(dtype) for _ in range(2))
    l1, l2 = (torch.randn(*shape[:-1], generator=g).to(dtype) * 3 for _ in range(2))
    if empty and l1.numel() >= 3:
        flat1, flat2 = l1.view(-1), l2.view(-1)
        flat1[0] = -math.inf                 # block 1 saw nothing
        flat2[1] = -math.inf                 # block 2 saw nothing
        flat1[2] = flat2[2] = -math.inf      # neither did
        o1.view(-1, shape[-1])[0] = float("nan")   # an empty block's output is never read
    return o1, l1, o2, l2


@pytest.mark.parametrize("shape", [(3, 1), (2, 3, 5, 8), (1, 4, 7, 64)])
@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_merge_matches_float64(shape, backend, monkeypatch):
    monkeypatch.setenv("MEGAMID_KERNELS", "auto" if backend == "cpp" else "reference")
    o1, l1, o2, l2 = _parts(shape, torch.float32)
    assert kernel_backend(o1.device, o1.dtype) == backend
    out, lse = merge_attention(o1, l1, o2, l2)
    want_out, want_lse = _float64_merge(o1, l1, o2, l2)
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    torch.testing.assert_close(lse.double(), want_lse, rtol=2e-7, atol=2e-6)
    torch.testing.assert_close(out.double(), want_out, rtol=2e-6, atol=2e-6)
    assert not out.isnan().any()


def test_cpp_float64_is_exact_to_rounding():
    o1, l1, o2, l2 = _parts((2, 3, 4, 16), torch.float64, seed=3)
    assert kernel_backend(o1.device, o1.dtype, l1.dtype) == "cpp"
    out, lse = merge_attention(o1, l1, o2, l2)
    want_out, want_lse = _float64_merge(o1, l1, o2, l2)
    torch.testing.assert_close(out, want_out, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(lse, want_lse, rtol=1e-14, atol=1e-14)


def test_merge_of_blocks_is_attention_over_their_union():
    """Splitting the keys in two and merging gives softmax attention over all of them."""
    from megamid.attention.local import block_attention

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 9, 16, generator=g) for _ in range(3))
    pos = torch.arange(9)
    full = block_attention(q, k, v, pos, pos)
    parts = [block_attention(q, k[:, :, sl], v[:, :, sl], pos, pos[sl]) for sl in (slice(0, 5), slice(5, 9))]
    out, lse = merge_attention(*parts[0], *parts[1])
    torch.testing.assert_close(out, full[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse, full[1], rtol=1e-5, atol=1e-6)


def test_gradient_matches_autograd_of_the_formula(monkeypatch):
    o1, l1, o2, l2 = (t.requires_grad_() for t in _parts((2, 3, 4), torch.float64, empty=False))
    assert torch.autograd.gradcheck(lambda *a: merge_attention(*a), (o1, l1, o2, l2))
    monkeypatch.setenv("MEGAMID_KERNELS", "reference")
    torch.library.opcheck(am.attention_merge, (o1, l1, o2, l2))


def test_backend_selection_and_errors(monkeypatch):
    cpu = torch.device("cpu")
    assert kernel_backend(cpu, torch.bfloat16) == "reference"     # C++ takes float32 / float64
    monkeypatch.setenv("MEGAMID_KERNELS", "cuda")
    with pytest.raises(RuntimeError, match="MEGAMID_KERNELS=cuda"):
        kernel_backend(cpu, torch.float32)
    monkeypatch.setenv("MEGAMID_KERNELS", "fast")
    with pytest.raises(ValueError, match="auto"):
        kernel_backend(cpu, torch.float32)
    monkeypatch.delenv("MEGAMID_KERNELS")
    with pytest.raises(ValueError, match="same shapes"):
        merge_attention(torch.zeros(2, 4), torch.zeros(2), torch.zeros(2, 4), torch.zeros(3))
    out, lse = merge_attention(*_parts((4, 8), torch.bfloat16, empty=False))   # reference in bf16
    assert out.dtype == torch.bfloat16


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_kernel_matches_reference(dtype, monkeypatch):
    monkeypatch.setenv("MEGAMID_KERNELS", "cuda")
    o1, l1, o2, l2 = _parts((2, 8, 333, 128), dtype)
    l1, l2 = l1.float(), l2.float()
    out, lse = merge_attention(*(t.cuda() for t in (o1, l1, o2, l2)))
    want_out, want_lse = _float64_merge(o1.float(), l1, o2.float(), l2)
    ref_out, _ = merge_attention_reference(o1, l1, o2, l2)   # the reference's own rounding to dtype
    ref_err = (ref_out.double() - want_out).abs().max().item()
    assert (out.cpu().double() - want_out).abs().max().item() <= 2 * ref_err + 1e-6
    torch.testing.assert_close(lse.cpu().double(), want_lse, rtol=1e-6, atol=1e-5)
