// The one pybind11 module for megamid's CPU helpers (megamid._C). Kernels live behind plain C APIs
// in csrc/<topic>/; this file only converts numpy arrays to pointers and back.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <type_traits>

#include "attention/attention_merge.h"
#include "data/mixture_index.h"
#include "packing/doc_positions.h"

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
}
