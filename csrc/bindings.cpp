// The one pybind11 module for megamid's CPU helpers (megamid._C). Kernels live behind plain C APIs
// in csrc/<topic>/; this file only converts numpy arrays to pointers and back.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <string>

#include <stdexcept>
#include <type_traits>

#include "attention/attention_merge.h"
#include "data/mixture_index.h"
#include "packing/doc_positions.h"
#include "rope/rope_cpu.h"

namespace py = pybind11;

using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

static py::tuple doc_positions(I64Array tokens, int64_t eod) {
  if (tokens.ndim() != 2) throw std::invalid_argument("tokens must be 2-D [rows, seq_len]");
  const int64_t rows = tokens.shape(0), seq_len = tokens.shape(1);
  py::array_t<int64_t> positions({rows, seq_len});
  py::array_t<int32_t> cu(rows * seq_len + 1);
  int64_t n;
  {
    py::gil_scoped_release release;
    n = megamid_doc_positions(tokens.data(), rows, seq_len, eod, positions.mutable_data(),
                              cu.mutable_data());
  }
  return py::make_tuple(positions, cu[py::slice(0, n + 1, 1)]);
}

using F64Array = py::array_t<double, py::array::c_style | py::array::forcecast>;

static py::tuple mixture_index(I64Array knot_samples, F64Array knot_shares, int64_t num_samples) {
  if (knot_samples.ndim() != 1 || knot_shares.ndim() != 2 || knot_shares.shape(0) != knot_samples.shape(0))
    throw std::invalid_argument("knot_samples must be [knots], knot_shares [knots, sources]");
  if (num_samples < 0) throw std::invalid_argument("num_samples must be >= 0");
  const int64_t knots = knot_samples.shape(0), sources = knot_shares.shape(1);
  py::array_t<int16_t> source_index(num_samples);
  py::array_t<int64_t> source_sample_index(num_samples);
  py::array_t<int64_t> counts(sources);
  int64_t rc;
  {
    py::gil_scoped_release release;
    rc = megamid_mixture_index(knot_samples.data(), knot_shares.data(), knots, sources, num_samples,
                               source_index.mutable_data(), source_sample_index.mutable_data(),
                               counts.mutable_data());
  }
  if (rc != 0) throw std::invalid_argument("knots must ascend from 0; sources must be 1..32767");
  return py::make_tuple(source_index, source_sample_index, counts);
}

template <typename T>
using FloatArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

// out1, out2 [rows, dim]; lse1, lse2 [rows] of one float type (float32 or float64).
template <typename T>
static py::tuple attention_merge(FloatArray<T> out1, FloatArray<T> lse1, FloatArray<T> out2,
                                 FloatArray<T> lse2) {
  if (out1.ndim() != 2 || out2.ndim() != 2 || lse1.ndim() != 1 || lse2.ndim() != 1)
    throw std::invalid_argument("attention_merge: out1, out2 must be 2-D [rows, dim], lse1, lse2 1-D [rows]");
  const int64_t rows = out1.shape(0), dim = out1.shape(1);
  if (out2.shape(0) != rows || out2.shape(1) != dim || lse1.shape(0) != rows || lse2.shape(0) != rows)
    throw std::invalid_argument("attention_merge: shapes disagree (need out [rows, dim], lse [rows])");
  py::array_t<T> out({rows, dim});
  py::array_t<T> lse(rows);
  int rc;
  {
    py::gil_scoped_release release;
    if constexpr (std::is_same_v<T, float>)
      rc = megamid_attention_merge_f32(out1.data(), lse1.data(), out2.data(), lse2.data(), rows, dim,
                                       out.mutable_data(), lse.mutable_data());
    else
      rc = megamid_attention_merge_f64(out1.data(), lse1.data(), out2.data(), lse2.data(), rows, dim,
                                       out.mutable_data(), lse.mutable_data());
  }
  if (rc != MEGAMID_MERGE_OK) throw std::invalid_argument("attention_merge: bad argument");
  return py::make_tuple(out, lse);
}

// ---- RoPE on host memory: the CUDA kernel's arguments (integer pointers, strides in elements) ----
using Strides3 = std::array<int64_t, 3>;

static void rope_raise(int status) {
  if (status == MEGAMID_ROPE_OK) return;
  throw py::value_error(std::string("megamid rope (cpu): ") + megamid_rope_cpu_error_string(status));
}

static void rope_qk(int dtype, int64_t seq_len, int64_t batch, int64_t head_dim, int64_t rotary_dim,
                    bool interleaved, bool backward, uintptr_t inv_freq, double attention_factor,
                    uintptr_t position_ids, int64_t pos_stride_s, int64_t pos_stride_b, uintptr_t cu_seqlens,
                    int64_t num_docs, int cp_size, int cp_rank, uintptr_t q_in, uintptr_t q_out, int64_t q_heads,
                    Strides3 q_in_stride, Strides3 q_out_stride, uintptr_t k_in, uintptr_t k_out,
                    int64_t k_heads, Strides3 k_in_stride, Strides3 k_out_stride) {
  megamid_rope_args_t a = megamid::rope::make_args(
      dtype, seq_len, batch, head_dim, rotary_dim, interleaved, backward, inv_freq, attention_factor,
      position_ids, pos_stride_s, pos_stride_b, cu_seqlens, num_docs, cp_size, cp_rank);
  a.rotate[0] = megamid::rope::plain_heads(reinterpret_cast<const void*>(q_in), reinterpret_cast<void*>(q_out),
                                           q_heads, q_in_stride.data(), q_out_stride.data());
  a.rotate[1] = megamid::rope::plain_heads(reinterpret_cast<const void*>(k_in), reinterpret_cast<void*>(k_out),
                                           k_heads, k_in_stride.data(), k_out_stride.data());
  int status;
  {
    py::gil_scoped_release release;
    status = megamid_rope_cpu(&a);
  }
  rope_raise(status);
}

static void rope_fused_qkv(int dtype, int64_t seq_len, int64_t batch, int64_t head_dim, int64_t rotary_dim,
                           bool interleaved, bool backward, uintptr_t inv_freq, double attention_factor,
                           uintptr_t position_ids, int64_t pos_stride_s, int64_t pos_stride_b,
                           uintptr_t cu_seqlens, int64_t num_docs, int cp_size, int cp_rank, uintptr_t qkv,
                           Strides3 qkv_stride, int64_t groups, int64_t q_per_group, uintptr_t q,
                           Strides3 q_stride, uintptr_t k, Strides3 k_stride, uintptr_t v, Strides3 v_stride) {
  megamid_rope_args_t a = megamid::rope::make_args(
      dtype, seq_len, batch, head_dim, rotary_dim, interleaved, backward, inv_freq, attention_factor,
      position_ids, pos_stride_s, pos_stride_b, cu_seqlens, num_docs, cp_size, cp_rank);
  int status;
  {
    py::gil_scoped_release release;
    status = megamid_rope_fused_qkv_cpu(&a, reinterpret_cast<void*>(qkv), qkv_stride.data(), groups, q_per_group,
                                        reinterpret_cast<void*>(q), q_stride.data(), reinterpret_cast<void*>(k),
                                        k_stride.data(), reinterpret_cast<void*>(v), v_stride.data(),
                                        backward ? 1 : 0);
  }
  rope_raise(status);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "megamid CPU helpers";
  m.def("doc_positions", &doc_positions, py::arg("tokens"), py::arg("eod"),
        "Positions restarting after each EOD and cu_seqlens of the documents in packed rows.");
  m.def("mixture_index", &mixture_index, py::arg("knot_samples"), py::arg("knot_shares"),
        py::arg("num_samples"),
        "(source_index int16, source_sample_index int64, counts) of a piecewise-linear blend.");
  // float32 first: with exact dtypes pybind11 picks the matching overload without converting.
  m.def("attention_merge", &attention_merge<float>, py::arg("out1"), py::arg("lse1"), py::arg("out2"),
        py::arg("lse2"),
        "(out, lse) merging two partial attention results over disjoint keys (log-sum-exp weights).");
  m.def("attention_merge", &attention_merge<double>, py::arg("out1"), py::arg("lse1"), py::arg("out2"),
        py::arg("lse2"));
  m.attr("DTYPE_FLOAT32") = static_cast<int>(MEGAMID_DTYPE_FLOAT32);
  m.attr("DTYPE_FLOAT16") = static_cast<int>(MEGAMID_DTYPE_FLOAT16);
  m.attr("DTYPE_BFLOAT16") = static_cast<int>(MEGAMID_DTYPE_BFLOAT16);
  m.def("rope_qk", &rope_qk, py::arg("dtype"), py::arg("seq_len"), py::arg("batch"), py::arg("head_dim"),
        py::arg("rotary_dim"), py::arg("interleaved"), py::arg("backward"), py::arg("inv_freq"),
        py::arg("attention_factor"), py::arg("position_ids"), py::arg("pos_stride_s"), py::arg("pos_stride_b"),
        py::arg("cu_seqlens"), py::arg("num_docs"), py::arg("cp_size"), py::arg("cp_rank"), py::arg("q_in"),
        py::arg("q_out"), py::arg("q_heads"), py::arg("q_in_stride"), py::arg("q_out_stride"), py::arg("k_in"),
        py::arg("k_out"), py::arg("k_heads"), py::arg("k_in_stride"), py::arg("k_out_stride"),
        "RoPE on host Q [s, b, hq, d] and K [s, b, hk, d]: the CUDA kernel's arithmetic as a CPU loop.");
  m.def("rope_fused_qkv", &rope_fused_qkv, py::arg("dtype"), py::arg("seq_len"), py::arg("batch"),
        py::arg("head_dim"), py::arg("rotary_dim"), py::arg("interleaved"), py::arg("backward"),
        py::arg("inv_freq"), py::arg("attention_factor"), py::arg("position_ids"), py::arg("pos_stride_s"),
        py::arg("pos_stride_b"), py::arg("cu_seqlens"), py::arg("num_docs"), py::arg("cp_size"),
        py::arg("cp_rank"), py::arg("qkv"), py::arg("qkv_stride"), py::arg("groups"), py::arg("q_per_group"),
        py::arg("q"), py::arg("q_stride"), py::arg("k"), py::arg("k_stride"), py::arg("v"), py::arg("v_stride"),
        "Split Megatron's fused QKV into rotated q, k and v (backward: the reverse) on host memory.");
}
