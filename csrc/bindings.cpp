// The one pybind11 module for megamid's CPU helpers (megamid._C). Kernels live behind plain C APIs
// in csrc/<topic>/; this file only converts numpy arrays to pointers and back.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>

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

PYBIND11_MODULE(_C, m) {
  m.doc() = "megamid CPU helpers";
  m.def("doc_positions", &doc_positions, py::arg("tokens"), py::arg("eod"),
        "Positions restarting after each EOD and cu_seqlens of the documents in packed rows.");
}
