#include "packing/doc_positions.h"

extern "C" int64_t megamid_doc_positions(const int64_t* tokens, int64_t rows, int64_t seq_len,
                                         int64_t eod, int64_t* positions, int32_t* cu_seqlens) {
  int64_t n_docs = 0;
  int64_t offset = 0;
  cu_seqlens[0] = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t* row = tokens + r * seq_len;
    int64_t* pos = positions + r * seq_len;
    int64_t p = 0;
    for (int64_t i = 0; i < seq_len; ++i) {
      pos[i] = p++;
      // A document ends at an EOD, or at the end of the row (rows never share a document).
      if (row[i] == eod || i == seq_len - 1) {
        cu_seqlens[++n_docs] = static_cast<int32_t>(offset + i + 1);
        p = 0;
      }
    }
    offset += seq_len;
  }
  return n_docs;
}
