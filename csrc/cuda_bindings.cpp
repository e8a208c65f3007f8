// The one pybind11 module for megamid's CUDA kernels (megamid._cuda). Python passes integer device
// pointers (tensor.data_ptr()), sizes, strides in elements and the current stream handle; this file
// only packs them into the kernels' plain C argument structs and turns status codes into exceptions.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "attention/attention_merge_cuda.h"
#include "rope/rope.h"

namespace py = pybind11;

using Strides3 = std::array<int64_t, 3>;

namespace {

void raise_on_error(int status) {
  if (status == MEGAMID_ROPE_OK) return;
  const std::string msg = std::string("megamid rope: ") + megamid_rope_error_string(status);
  if (status == MEGAMID_ROPE_BAD_ARGUMENT) throw py::value_error(msg);
  throw std::runtime_error(msg);
}

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void rope_qk(int dtype, int64_t seq_len, int64_t batch, int64_t head_dim, int64_t rotary_dim,
             bool interleaved, bool backward, uintptr_t inv_freq, double attention_factor,
             uintptr_t position_ids, int64_t pos_stride_s, int64_t pos_stride_b, uintptr_t cu_seqlens,
             int64_t num_docs, int cp_size, int cp_rank, uintptr_t q_in, uintptr_t q_out, int64_t q_heads,
             Strides3 q_in_stride, Strides3 q_out_stride, uintptr_t k_in, uintptr_t k_out,
             int64_t k_heads, Strides3 k_in_stride, Strides3 k_out_stride, uintptr_t stream) {
  megamid_rope_args_t a =
      megamid::rope::make_args(dtype, seq_len, batch, head_dim, rotary_dim, interleaved, backward, inv_freq,
                               attention_factor, position_ids, pos_stride_s, pos_stride_b, cu_seqlens,
                               num_docs, cp_size, cp_rank);
  a.rotate[0] = megamid::rope::plain_heads(ptr<const void>(q_in), ptr<void>(q_out), q_heads,
                                           q_in_stride.data(), q_out_stride.data());
  a.rotate[1] = megamid::rope::plain_heads(ptr<const void>(k_in), ptr<void>(k_out), k_heads,
                                           k_in_stride.data(), k_out_stride.data());
  int status;
  {
    py::gil_scoped_release release;
    status = megamid_rope(&a, reinterpret_cast<cudaStream_t>(stream));
  }
  raise_on_error(status);
}

void rope_fused_qkv(int dtype, int64_t seq_len, int64_t batch, int64_t head_dim, int64_t rotary_dim,
                    bool interleaved, bool backward, uintptr_t inv_freq, double attention_factor,
                    uintptr_t position_ids, int64_t pos_stride_s, int64_t pos_stride_b,
                    uintptr_t cu_seqlens, int64_t num_docs, int cp_size, int cp_rank, uintptr_t qkv,
                    Strides3 qkv_stride, int64_t groups, int64_t q_per_group, uintptr_t q,
                    Strides3 q_stride, uintptr_t k, Strides3 k_stride, uintptr_t v, Strides3 v_stride,
                    uintptr_t stream) {
  megamid_rope_args_t a =
      megamid::rope::make_args(dtype, seq_len, batch, head_dim, rotary_dim, interleaved, backward, inv_freq,
                               attention_factor, position_ids, pos_stride_s, pos_stride_b, cu_seqlens,
                               num_docs, cp_size, cp_rank);
  int status;
  {
    py::gil_scoped_release release;
    status = megamid_rope_fused_qkv(&a, ptr<void>(qkv), qkv_stride.data(), groups, q_per_group,
                                    ptr<void>(q), q_stride.data(), ptr<void>(k), k_stride.data(),
                                    ptr<void>(v), v_stride.data(), backward ? 1 : 0,
                                    reinterpret_cast<cudaStream_t>(stream));
  }
  raise_on_error(status);
}

void attention_merge(int dtype, uintptr_t out1, uintptr_t lse1, uintptr_t out2, uintptr_t lse2, int64_t rows,
                     int64_t dim, uintptr_t out, uintptr_t lse, uintptr_t stream) {
  int status;
  {
    py::gil_scoped_release release;
    status = megamid_attention_merge_cuda(dtype, ptr<const void>(out1), ptr<const float>(lse1),
                                          ptr<const void>(out2), ptr<const float>(lse2), rows, dim,
                                          ptr<void>(out), ptr<float>(lse), reinterpret_cast<cudaStream_t>(stream));
  }
  if (status == MEGAMID_MERGE_OK) return;
  const std::string msg = std::string("megamid attention_merge: ") + megamid_attention_merge_error_string(status);
  if (status == MEGAMID_MERGE_BAD_ARGUMENT) throw py::value_error(msg);
  throw std::runtime_error(msg);
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "megamid CUDA kernels (raw device pointers; see megamid/kernels for the torch ops)";
  m.attr("DTYPE_FLOAT32") = static_cast<int>(MEGAMID_DTYPE_FLOAT32);
  m.attr("DTYPE_FLOAT16") = static_cast<int>(MEGAMID_DTYPE_FLOAT16);
  m.attr("DTYPE_BFLOAT16") = static_cast<int>(MEGAMID_DTYPE_BFLOAT16);
  m.def("rope_qk", &rope_qk, py::arg("dtype"), py::arg("seq_len"), py::arg("batch"),
        py::arg("head_dim"), py::arg("rotary_dim"), py::arg("interleaved"), py::arg("backward"),
        py::arg("inv_freq"), py::arg("attention_factor"), py::arg("position_ids"),
        py::arg("pos_stride_s"), py::arg("pos_stride_b"), py::arg("cu_seqlens"), py::arg("num_docs"),
        py::arg("cp_size"), py::arg("cp_rank"), py::arg("q_in"), py::arg("q_out"), py::arg("q_heads"),
        py::arg("q_in_stride"), py::arg("q_out_stride"), py::arg("k_in"), py::arg("k_out"),
        py::arg("k_heads"), py::arg("k_in_stride"), py::arg("k_out_stride"), py::arg("stream"),
        "RoPE on Q [s, b, hq, d] and K [s, b, hk, d] in one launch (pointers are 0 when absent).");
  m.def("rope_fused_qkv", &rope_fused_qkv, py::arg("dtype"), py::arg("seq_len"), py::arg("batch"),
        py::arg("head_dim"), py::arg("rotary_dim"), py::arg("interleaved"), py::arg("backward"),
        py::arg("inv_freq"), py::arg("attention_factor"), py::arg("position_ids"),
        py::arg("pos_stride_s"), py::arg("pos_stride_b"), py::arg("cu_seqlens"), py::arg("num_docs"),
        py::arg("cp_size"), py::arg("cp_rank"), py::arg("qkv"), py::arg("qkv_stride"),
        py::arg("groups"), py::arg("q_per_group"), py::arg("q"), py::arg("q_stride"), py::arg("k"),
        py::arg("k_stride"), py::arg("v"), py::arg("v_stride"), py::arg("stream"),
        "Split Megatron's fused QKV [s, b, g, (hq/g + 2) * d] into rotated q, k and v (backward: the "
        "reverse) in one launch.");
  m.def("attention_merge", &attention_merge, py::arg("dtype"), py::arg("out1"), py::arg("lse1"),
        py::arg("out2"), py::arg("lse2"), py::arg("rows"), py::arg("dim"), py::arg("out"), py::arg("lse"),
        py::arg("stream"),
        "Merge two partial attention results (contiguous [rows, dim] outputs, float32 [rows] log-sum-exps).");
}
