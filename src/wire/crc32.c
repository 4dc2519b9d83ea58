/*
 * crc32.c - the IEEE CRC-32 of frames, checkpoints and cursor files.
 *
 * zlib computes it a word at a time. On x86-64 processors with PCLMULQDQ
 * (carry-less multiplication) this file folds 64 bytes per step instead, the
 * method of Intel's paper "Fast CRC Computation for Generic Polynomials Using
 * PCLMULQDQ Instruction" (Gopal et al., 2009), with the constants for the
 * bit-reflected polynomial 0x104C11DB7:
 *
 *   k1 = x^(4*128+32) mod P, k2 = x^(4*128-32) mod P   fold 512 bits ahead
 *   k3 = x^(128+32) mod P,   k4 = x^(128-32) mod P     fold 128 bits ahead
 *   k5 = x^64 mod P                                     64 -> 32 bits
 *   P' = 0x1DB710641, mu = 0x1F7011641                  Barrett reduction
 *
 * (all bit-reflected). Inputs shorter than 64 bytes, and the last len % 16
 * bytes, go to zlib, which continues from the folded value. BATPAK_NO_SIMD in
 * the environment turns this off (bp__cpu_features), so that the tests cover
 * the portable code too.
 */
#include "wire/records.h"

#include <zlib.h>

static uint32_t crc_zlib(uint32_t crc, const uint8_t *p, size_t len) {
  while (len > 0) {
    uInt chunk = len > 0x40000000u ? 0x40000000u : (uInt)len;
    crc = (uint32_t)crc32(crc, p, chunk);
    p += chunk;
    len -= chunk;
  }
  return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define CLMUL_TARGET __attribute__((target("pclmul,sse4.1")))

/* The CRC of p[0..len) continuing from crc (a finished CRC, as zlib's);
 * len >= 64 and a multiple of 16. */
CLMUL_TARGET static uint32_t crc_fold(uint32_t crc, const uint8_t *p, size_t len) {
  const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596, 0x0154442bd4);
  const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009e, 0x01751997d0);
  const __m128i k5 = _mm_set_epi64x(0, 0x0163cd6124);
  const __m128i poly = _mm_set_epi64x(0x01f7011641, 0x01db710641);
  const __m128i mask32 = _mm_set_epi32(0, 0, 0, -1);

  __m128i x1 = _mm_loadu_si128((const __m128i *)p);
  __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 16));
  __m128i x3 = _mm_loadu_si128((const __m128i *)(p + 32));
  __m128i x4 = _mm_loadu_si128((const __m128i *)(p + 48));
  x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)~crc));
  p += 64;
  len -= 64;

  /* Four lanes of 128 bits, each folded 512 bits ahead onto the next block. */
#define FOLD(x, k, next)                                                                         \
  _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11)), \
                (next))
  while (len >= 64) {
    x1 = FOLD(x1, k1k2, _mm_loadu_si128((const __m128i *)p));
    x2 = FOLD(x2, k1k2, _mm_loadu_si128((const __m128i *)(p + 16)));
    x3 = FOLD(x3, k1k2, _mm_loadu_si128((const __m128i *)(p + 32)));
    x4 = FOLD(x4, k1k2, _mm_loadu_si128((const __m128i *)(p + 48)));
    p += 64;
    len -= 64;
  }
  /* The four lanes into one, then the remaining 16-byte blocks. */
  x1 = FOLD(x1, k3k4, x2);
  x1 = FOLD(x1, k3k4, x3);
  x1 = FOLD(x1, k3k4, x4);
  while (len >= 16) {
    x1 = FOLD(x1, k3k4, _mm_loadu_si128((const __m128i *)p));
    p += 16;
    len -= 16;
  }
#undef FOLD
  /* 128 -> 64 bits: the low half times k4, added to the high half. */
  x1 = _mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x10), _mm_srli_si128(x1, 8));
  /* 64 -> 32 bits. */
  x1 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, mask32), k5, 0x00), _mm_srli_si128(x1, 4));
  /* Barrett reduction to the 32-bit remainder. */
  __m128i t = _mm_clmulepi64_si128(_mm_and_si128(x1, mask32), poly, 0x10);
  t = _mm_clmulepi64_si128(_mm_and_si128(t, mask32), poly, 0x00);
  x1 = _mm_xor_si128(x1, t);
  return ~(uint32_t)_mm_extract_epi32(x1, 1);
}

uint32_t bp__crc32_update(uint32_t crc, const void *data, size_t len) {
  const uint8_t *p = data;
  if (len >= 64 && (bp__cpu_features() & BP__CPU_CLMUL)) {
    size_t bulk = len & ~(size_t)15;
    return crc_zlib(crc_fold(crc, p, bulk), p + bulk, len - bulk);
  }
  return crc_zlib(crc, p, len);
}

#else

uint32_t bp__crc32_update(uint32_t crc, const void *data, size_t len) { return crc_zlib(crc, data, len); }

#endif

uint32_t bp__crc32(const void *data, size_t len) { return bp__crc32_update(0, data, len); }
