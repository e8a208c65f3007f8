// Document boundaries inside packed token rows: positions restart after each end-of-document token.
#pragma once
#include <cstdint>

#ifdef __cplusplus
extern "C" {
#endif

// tokens: [rows, seq_len] row-major. For every row, positions[i] counts tokens since the last EOD
// (the EOD belongs to the document it ends). cu_seqlens receives the cumulative document lengths of
// all rows concatenated (first entry 0); it must hold rows * seq_len + 1 entries. Returns the number
// of documents written (cu_seqlens then has that many + 1 valid entries).
int64_t megamid_doc_positions(const int64_t* tokens, int64_t rows, int64_t seq_len, int64_t eod,
                              int64_t* positions, int32_t* cu_seqlens);

#ifdef __cplusplus
}
#endif
