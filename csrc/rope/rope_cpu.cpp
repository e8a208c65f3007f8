// CPU loop of rope_cpu.h: per token, the position and rotary_dim / 2 cos/sin pairs once, then every
// head of Q and K rotated (pass-through elements copied) and V copied, as the CUDA kernel does; the
// arithmetic is rope_math.h's. fp16 / bf16 convert with round-to-nearest-even, as __float2half_rn and
// __float2bfloat16_rn do.
#include "rope/rope_cpu.h"

#include <cstdio>
#include <cstring>
#include <vector>

#include "rope/rope_math.h"

namespace {

using namespace megamid::rope;

thread_local char g_error[256] = "";

int fail(const char* msg) {
  snprintf(g_error, sizeof(g_error), "%s", msg);
  return MEGAMID_ROPE_BAD_ARGUMENT;
}

uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u, mant = x & 0x7fffffu;
  const int exp = (int)((x >> 23) & 0xff);
  if (exp == 0xff) return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0u));
  const int e = exp - 112;  // the half exponent field
  if (e >= 0x1f) return (uint16_t)(sign | 0x7c00u);
  if (e <= 0) {  // a half subnormal (or zero): value / 2^-24, rounded to nearest even
    if (e < -10) return (uint16_t)sign;
    const uint32_t m = mant | 0x800000u;
    const int shift = 14 - e;
    uint32_t h = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
    return (uint16_t)(sign | h);
  }
  uint32_t h = sign | ((uint32_t)e << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry rounds up into the exponent (inf)
  return (uint16_t)h;
}

float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  int exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ffu, x;
  if (exp == 0x1f) {
    x = sign | 0x7f800000u | (mant << 13);
  } else if (exp == 0) {
    if (!mant) {
      x = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        mant <<= 1;
        ++e;
      } while (!(mant & 0x400u));
      x = sign | ((uint32_t)(112 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else {
    x = sign | ((uint32_t)(exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t float_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);  // NaN stays NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return (uint16_t)(x >> 16);
}

float bf16_to_float(uint16_t b) {
  const uint32_t x = (uint32_t)b << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

struct F32 {
  using T = float;
  static float load(const T* p) { return *p; }
  static void store(T* p, float v) { *p = v; }
};
struct F16 {
  using T = uint16_t;
  static float load(const T* p) { return half_to_float(*p); }
  static void store(T* p, float v) { *p = float_to_half(v); }
};
struct BF16 {
  using T = uint16_t;
  static float load(const T* p) { return bf16_to_float(*p); }
  static void store(T* p, float v) { *p = float_to_bf16(v); }
};

template <typename D>
void run(const megamid_rope_args_t& a) {
  using T = typename D::T;
  const Positions where = positions_of(a);
  const int half_rd = (int)(a.rotary_dim / 2);
  const int64_t d = a.head_dim, rd = a.rotary_dim;
  const float sign = a.backward ? -1.f : 1.f;
  const bool interleaved = a.interleaved != 0;
  std::vector<float> cs(half_rd), sn(half_rd);
  const megamid_rope_heads_t* sets[3] = {&a.rotate[0], &a.rotate[1], &a.copy};
  for (int64_t tok = 0; tok < a.seq_len * a.batch; ++tok) {
    int64_t si, bi;
    token_index(tok, a.batch, &si, &bi);
    const int64_t pos = position_of(where, tok);
    for (int f = 0; f < half_rd; ++f) rope_cos_sin(pos, a.inv_freq[f], a.attention_factor, sign, &cs[f], &sn[f]);
    for (int set = 0; set < 3; ++set) {
      const megamid_rope_heads_t& h = *sets[set];
      if (h.groups <= 0) continue;
      const int64_t hpg = h.heads_per_group > 0 ? h.heads_per_group : 1;
      for (int64_t hh = 0; hh < h.groups * hpg; ++hh) {
        const T* in = static_cast<const T*>(h.in) +
                      head_offset(hh, hpg, si, bi, h.in_stride[0], h.in_stride[1], h.in_stride[2], h.in_stride[3]);
        T* out = static_cast<T*>(h.out) + head_offset(hh, hpg, si, bi, h.out_stride[0], h.out_stride[1],
                                                      h.out_stride[2], h.out_stride[3]);
        int64_t first_copied = 0;
        if (set < 2) {
          for (int f = 0; f < half_rd; ++f) {
            int e1, e2;
            pair_elements(f, half_rd, interleaved, &e1, &e2);
            float y1, y2;
            rotate_pair(D::load(in + e1), D::load(in + e2), cs[f], sn[f], &y1, &y2);
            D::store(out + e1, y1);
            D::store(out + e2, y2);
          }
          first_copied = rd;
        }
        if (in != out && d > first_copied)  // pass-through elements (and V) are copied bit for bit
          std::memmove(out + first_copied, in + first_copied, (size_t)(d - first_copied) * sizeof(T));
      }
    }
  }
}

}  // namespace

extern "C" int megamid_rope_cpu(const megamid_rope_args_t* a) {
  const char* why = check_args(a);
  if (why) return fail(why);
  switch (a->dtype) {
    case MEGAMID_DTYPE_FLOAT32: run<F32>(*a); break;
    case MEGAMID_DTYPE_FLOAT16: run<F16>(*a); break;
    case MEGAMID_DTYPE_BFLOAT16: run<BF16>(*a); break;
  }
  return MEGAMID_ROPE_OK;
}

extern "C" int megamid_rope_fused_qkv_cpu(const megamid_rope_args_t* args, void* qkv,
                                          const int64_t qkv_stride[3], int64_t groups, int64_t q_per_group,
                                          void* q, const int64_t q_stride[3], void* k,
                                          const int64_t k_stride[3], void* v, const int64_t v_stride[3],
                                          int backward) {
  if (!args) return fail("args is NULL");
  megamid_rope_args_t a = *args;
  const char* why = fused_qkv_args(&a, qkv, qkv_stride, groups, q_per_group, q, q_stride, k, k_stride, v,
                                   v_stride, backward);
  return why ? fail(why) : megamid_rope_cpu(&a);
}

extern "C" const char* megamid_rope_cpu_error_string(int status) {
  return status == MEGAMID_ROPE_OK ? "ok" : g_error;
}
