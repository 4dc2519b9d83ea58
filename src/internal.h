/*
 * internal.h - helpers shared by every part of the library. Not installed.
 *
 * Naming: bp_ is public, bp__ is internal but visible across files, plain
 * names are static to one file.
 */
#ifndef BATPAK_INTERNAL_H
#define BATPAK_INTERNAL_H

#include "batpak/core.h"
#include "batpak/store.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#  define BP__PRINTF(f, a) __attribute__((format(printf, f, a)))
#  define BP__LIKELY(x) __builtin_expect(!!(x), 1)
#  define BP__UNLIKELY(x) __builtin_expect(!!(x), 0)
#  define BP__ALWAYS_INLINE inline __attribute__((always_inline))
#else
#  define BP__PRINTF(f, a)
#  define BP__LIKELY(x) (x)
#  define BP__UNLIKELY(x) (x)
#  define BP__ALWAYS_INLINE inline
#endif

/* Records a failure for bp_last_error() on this thread and returns code, so
 * that `return bp__fail(BP_EINVAL, "...")` reads as one step: the public
 * bp_set_error (core.h), by the name the library's own code uses. */
#define bp__fail bp_set_error
/* The same with the errno of a failed OS call, which is appended to the
 * message. ENOMEM makes the error BP_ENOMEM, whatever code says. */
bp_status bp__fail_errno(bp_status code, int err, const char *fmt, ...) BP__PRINTF(3, 4);
/* Prefixes the current thread's error message with context ("segment 3: ...")
 * and returns its code. */
bp_status bp__fail_context(const char *fmt, ...) BP__PRINTF(1, 2);
/* The same, and the error becomes one of kind code (a decoder's BP_ESERIAL
 * reported as a corrupt file, say), unless it is BP_ENOMEM, which stays;
 * returns the error's code. The message is never passed
 * back in as a format argument, which would overlap the buffer written. */
bp_status bp__fail_within(bp_status code, const char *fmt, ...) BP__PRINTF(2, 3);

/* Restores an error captured on another thread as this thread's last error. */
void bp__set_error(const bp_error *err);

/* ---- a growable byte buffer ---- */
typedef struct bp__buf {
  uint8_t *data;
  size_t len, cap;
  bool oom;            /* a growth failed: contents are incomplete */
  bool borrowed;       /* data is the caller's memory (bp__buf_init_on), not the heap's */
} bp__buf;

void bp__buf_init(bp__buf *b);
/* Starts b on cap bytes of memory the caller owns (a stack array, say): it
 * moves to the heap only when it must grow past them. */
void bp__buf_init_on(bp__buf *b, uint8_t *mem, size_t cap);
void bp__buf_free(bp__buf *b);
/* Makes room for n more bytes; false (and oom set) when memory runs out. */
bool bp__buf_reserve(bp__buf *b, size_t n);
void bp__buf_append(bp__buf *b, const void *src, size_t n);

static inline void bp__buf_put1(bp__buf *b, uint8_t v) {
  if (BP__LIKELY(b->len < b->cap) || bp__buf_reserve(b, 1)) b->data[b->len++] = v;
}

/* ---- fixed-width integers ---- */
static inline void bp__put_be16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v;
}
static inline void bp__put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void bp__put_be64(uint8_t *p, uint64_t v) {
  bp__put_be32(p, (uint32_t)(v >> 32)); bp__put_be32(p + 4, (uint32_t)v);
}
static inline uint16_t bp__get_be16(const uint8_t *p) {
  return (uint16_t)((p[0] << 8) | p[1]);
}
static inline uint32_t bp__get_be32(const uint8_t *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t bp__get_be64(const uint8_t *p) {
  return ((uint64_t)bp__get_be32(p) << 32) | bp__get_be32(p + 4);
}
static inline void bp__put_le16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void bp__put_le32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void bp__put_le64(uint8_t *p, uint64_t v) {
  bp__put_le32(p, (uint32_t)v); bp__put_le32(p + 4, (uint32_t)(v >> 32));
}
static inline uint16_t bp__get_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t bp__get_le32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t bp__get_le64(const uint8_t *p) {
  return (uint64_t)bp__get_le32(p) | ((uint64_t)bp__get_le32(p + 4) << 32);
}

/* Optional x86-64 instruction sets present and allowed (none elsewhere, and
 * none with BATPAK_NO_SIMD in the environment), read once. */
#define BP__CPU_CLMUL 1u   /* PCLMULQDQ and SSE4.1: the folded CRC-32 */
#define BP__CPU_SSSE3 2u   /* SSSE3: integer byte arrays a shuffle per window */
#define BP__CPU_POPCNT 4u  /* POPCNT: with SSSE3, integer byte arrays 64 bytes at a time */
#define BP__CPU_VCLMUL 8u  /* VPCLMULQDQ and AVX2, with CLMUL: the CRC-32 folded 256 bits a multiplication */
#define BP__CPU_BMI2 16u   /* fast PDEP/PEXT and AVX2: integer byte arrays packed by PEXT */

/* Where the first byte that is not strict UTF-8 (no overlong forms, no
 * surrogates, nothing above U+10FFFF) starts in p[0..n), or SIZE_MAX when all
 * of it is valid (utf8.c). */
size_t bp__utf8_invalid_at(const uint8_t *p, size_t n);

unsigned bp__cpu_features(void);

/* Sleeping until a word changes (park.c). bp__park_wait returns when *word
 * is no longer seen, and may return early: callers check their condition in
 * a loop. bp__park_wake_all rouses every thread waiting on word (change the
 * word first) and returns how many of them it counted: each of those, and
 * only those, sees bp__park_wait return true. Where there is no such count,
 * it returns 0 and every wait false. */
bool bp__park_wait(_Atomic uint32_t *word, uint32_t seen);
unsigned bp__park_wake_all(_Atomic uint32_t *word);
/* The same across processes, for a word in a shared file mapping (the
 * store's head file): the kernel keys the wait by file and offset. A wait
 * gives up after timeout_ms (negative: never). Where there is no shared
 * futex, the wait only sleeps out its timeout (at most 50 ms at a time) and
 * the wake does nothing: followers then look every 50 ms. */
void bp__park_wait_shared(_Atomic uint32_t *word, uint32_t seen, int timeout_ms);
void bp__park_wake_shared(_Atomic uint32_t *word);

/* An append the library makes itself for the caller (a reactor's reaction, a
 * receipt committed by append): as bp_append_reaction, with a fresh id as its
 * idempotency key, which a store in group commit requires of every append and
 * which the caller had no way to give (writer.c). nil ids: none. */
/* BP_EINVAL naming the kind when it is in a reserved category (system 0x0,
 * effect 0xD), which only the library may append; what prefixes the message. */
bp_status bp__kind_check_appendable(bp_kind kind, const char *what);
/* bp_append_batch for events the library writes itself, which may carry
 * the reserved kinds that every public append refuses (writer.c). */
bp_status bp__append_batch_library(bp_store *s, const bp_event_in *events, size_t n, bp_append_receipt *outs);
bp_status bp__append_own(bp_store *s, const bp_coord *coord, bp_kind kind, const void *payload, size_t len,
                         bp_id correlation_id, bp_id causation_id, bp_append_receipt *out);

#endif /* BATPAK_INTERNAL_H */
