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
 * (all bit-reflected). With VPCLMULQDQ and AVX2 the 64-byte steps take two
 * 256-bit multiplications a lane pair instead of four 128-bit ones. The last
 * len % 16 bytes are folded too (a byte shuffle lines them up), so only
 * inputs under 16 bytes go to zlib. BATPAK_NO_SIMD in the environment turns
 * this off (bp__cpu_features), so that the tests cover the portable code too.
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

#define CLMUL_TARGET __attribute__((target("pclmul,ssse3,sse4.1")))
#define WIDE_TARGET __attribute__((target("pclmul,ssse3,sse4.1,avx2,vpclmulqdq")))

#define K1K2 _mm_set_epi64x(0x01c6e41596, 0x0154442bd4)
#define K3K4 _mm_set_epi64x(0x00ccaa009e, 0x01751997d0)

/* x moved 128 bits (k3k4) or 512 bits (k1k2) ahead, plus next. */
CLMUL_TARGET static inline __m128i fold(__m128i x, __m128i k, __m128i next) {
  return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11)), next);
}

/* Byte-shift controls for _mm_shuffle_epi8 (for 0 < r < 16): the 16 bytes at
 * shift_ctl + r move a register's first r bytes to its top and zero the rest
 * (the control's high bits mark those 16 - r zero bytes); the 16 at
 * shift_ctl + 16 + r move its bytes r places down, zeroing the top r. */
static const uint8_t shift_ctl[48] = {
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0,    1,    2,    3,    4,    5,    6,    7,    8,    9,    10,   11,   12,   13,   14,   15,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80};

/* The finished CRC from x, the fold of everything before p, and the bytes
 * p[0..end) still to come (at least 16 bytes precede end). */
CLMUL_TARGET static inline uint32_t crc_finish(__m128i x, const uint8_t *p, const uint8_t *end) {
  const __m128i k3k4 = K3K4;
  const __m128i k5 = _mm_set_epi64x(0, 0x0163cd6124);
  const __m128i poly = _mm_set_epi64x(0x01f7011641, 0x01db710641);
  const __m128i mask32 = _mm_set_epi32(0, 0, 0, -1);
  for (; end - p >= 16; p += 16) x = fold(x, k3k4, _mm_loadu_si128((const __m128i *)(const void *)p));
  size_t r = (size_t)(end - p);
  if (r) {
    /* The last r bytes: x's first r bytes, as a block of 16 - r zero bytes
     * and then them, fold onto a block of x's other 16 - r bytes followed by
     * the r new ones (the top of the buffer's last 16 bytes). */
    __m128i up = _mm_loadu_si128((const __m128i *)(const void *)(shift_ctl + r));
    __m128i down = _mm_loadu_si128((const __m128i *)(const void *)(shift_ctl + 16 + r));
    __m128i last = _mm_loadu_si128((const __m128i *)(const void *)(end - 16));
    x = fold(_mm_shuffle_epi8(x, up), k3k4, _mm_blendv_epi8(last, _mm_shuffle_epi8(x, down), up));
  }
  /* 128 -> 64 bits: the low half times k4, added to the high half. */
  x = _mm_xor_si128(_mm_clmulepi64_si128(x, k3k4, 0x10), _mm_srli_si128(x, 8));
  /* 64 -> 32 bits. */
  x = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x, mask32), k5, 0x00), _mm_srli_si128(x, 4));
  /* Barrett reduction to the 32-bit remainder. */
  __m128i t = _mm_clmulepi64_si128(_mm_and_si128(x, mask32), poly, 0x10);
  t = _mm_clmulepi64_si128(_mm_and_si128(t, mask32), poly, 0x00);
  x = _mm_xor_si128(x, t);
  return ~(uint32_t)_mm_extract_epi32(x, 1);
}

/* The first 16 bytes with the running CRC folded in. */
CLMUL_TARGET static inline __m128i crc_start(uint32_t crc, const uint8_t *p) {
  return _mm_xor_si128(_mm_loadu_si128((const __m128i *)(const void *)p), _mm_cvtsi32_si128((int)~crc));
}

/* Four lanes of 128 bits folded into one (each 128 bits ahead of the last). */
CLMUL_TARGET static inline __m128i fold_lanes(__m128i x1, __m128i x2, __m128i x3, __m128i x4) {
  const __m128i k3k4 = K3K4;
  return fold(fold(fold(x1, k3k4, x2), k3k4, x3), k3k4, x4);
}

/* The CRC of p[0..len) continuing from crc (a finished CRC, as zlib's);
 * len >= 16. Inputs of 64 bytes or more go in four lanes of 16 bytes, each
 * folded 512 bits ahead onto the next 64-byte block. */
CLMUL_TARGET static uint32_t crc_fold(uint32_t crc, const uint8_t *p, size_t len) {
  const uint8_t *end = p + len;
  __m128i x1 = crc_start(crc, p);
  if (len < 64) return crc_finish(x1, p + 16, end);
  const __m128i k1k2 = K1K2;
  __m128i x2 = _mm_loadu_si128((const __m128i *)(const void *)(p + 16));
  __m128i x3 = _mm_loadu_si128((const __m128i *)(const void *)(p + 32));
  __m128i x4 = _mm_loadu_si128((const __m128i *)(const void *)(p + 48));
  for (p += 64; end - p >= 64; p += 64) {
    x1 = fold(x1, k1k2, _mm_loadu_si128((const __m128i *)(const void *)p));
    x2 = fold(x2, k1k2, _mm_loadu_si128((const __m128i *)(const void *)(p + 16)));
    x3 = fold(x3, k1k2, _mm_loadu_si128((const __m128i *)(const void *)(p + 32)));
    x4 = fold(x4, k1k2, _mm_loadu_si128((const __m128i *)(const void *)(p + 48)));
  }
  return crc_finish(fold_lanes(x1, x2, x3, x4), p, end);
}

/* crc_fold with the lanes paired in 256-bit registers. */
WIDE_TARGET static inline __m256i fold_wide(__m256i y, __m256i k, const uint8_t *next) {
  return _mm256_xor_si256(_mm256_xor_si256(_mm256_clmulepi64_epi128(y, k, 0x00), _mm256_clmulepi64_epi128(y, k, 0x11)),
                          _mm256_loadu_si256((const __m256i *)(const void *)next));
}

WIDE_TARGET static uint32_t crc_fold_wide(uint32_t crc, const uint8_t *p, size_t len) {
  const uint8_t *end = p + len;
  if (len < 64) return crc_finish(crc_start(crc, p), p + 16, end);
  const __m256i k1k2 = _mm256_broadcastsi128_si256(K1K2);
  __m256i y1 = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)(const void *)(p + 16)), crc_start(crc, p));
  __m256i y2 = _mm256_loadu_si256((const __m256i *)(const void *)(p + 32));
  for (p += 64; end - p >= 64; p += 64) {
    y1 = fold_wide(y1, k1k2, p);
    y2 = fold_wide(y2, k1k2, p + 32);
  }
  __m128i x = fold_lanes(_mm256_castsi256_si128(y1), _mm256_extracti128_si256(y1, 1), _mm256_castsi256_si128(y2),
                         _mm256_extracti128_si256(y2, 1));
  return crc_finish(x, p, end);
}

uint32_t bp__crc32_update_using(unsigned cpu, uint32_t crc, const void *data, size_t len) {
  cpu &= bp__cpu_features();
  if (len >= 16) {
    if (cpu & BP__CPU_VCLMUL) return crc_fold_wide(crc, data, len);
    if (cpu & BP__CPU_CLMUL) return crc_fold(crc, data, len);
  }
  return crc_zlib(crc, data, len);
}

uint32_t bp__crc32_update(uint32_t crc, const void *data, size_t len) {
  return bp__crc32_update_using(~0u, crc, data, len);
}

#else

uint32_t bp__crc32_update_using(unsigned cpu, uint32_t crc, const void *data, size_t len) {
  (void)cpu;
  return crc_zlib(crc, data, len);
}

uint32_t bp__crc32_update(uint32_t crc, const void *data, size_t len) { return crc_zlib(crc, data, len); }

#endif

uint32_t bp__crc32(const void *data, size_t len) { return bp__crc32_update(0, data, len); }
