/*
 * canon.h - reading the canonical MessagePack layout in one pass.
 *
 * Every writer of the store's records (the crate and this library) emits one
 * layout: map keys in declaration order, integers in their smallest forms,
 * ids as bin8, byte arrays as integer arrays. A fast decoder for a record
 * compares its key bytes in place with these helpers and reads each value in
 * the form the layout gives it. Each helper returns false, recording no
 * error, for anything else; the record's general decoder then decides.
 */
#ifndef BATPAK_WIRE_CANON_H
#define BATPAK_WIRE_CANON_H

#include "wire/msgpack.h"

typedef struct canon {
  const uint8_t *p, *end;
} canon;

#define CANON_LIT(c, lit) canon_lit((c), (lit), sizeof(lit) - 1)

/* Raw words for equality tests (byte order does not matter for ==). */
static BP__ALWAYS_INLINE uint64_t word8(const void *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}
static BP__ALWAYS_INLINE uint32_t word4(const void *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

/* a[0..n) == b[0..n) for a small constant n, by word loads (the last word
 * overlapping the one before): with the literal known at compile time this is
 * a few compares against immediates, where memcmp would be a call. */
static BP__ALWAYS_INLINE bool same_bytes(const uint8_t *a, const char *b, size_t n) {
  if (n >= 8) {
    for (size_t i = 0; i + 8 <= n; i += 8)
      if (word8(a + i) != word8(b + i)) return false;
    return word8(a + n - 8) == word8(b + n - 8);
  }
  if (n >= 4) return word4(a) == word4(b) && word4(a + n - 4) == word4(b + n - 4);
  for (size_t i = 0; i < n; i++)
    if (a[i] != (uint8_t)b[i]) return false;
  return true;
}

static BP__ALWAYS_INLINE bool canon_lit(canon *c, const char *lit, size_t n) {
  if ((size_t)(c->end - c->p) < n || !same_bytes(c->p, lit, n)) return false;
  c->p += n;
  return true;
}

static BP__ALWAYS_INLINE bool canon_uint(canon *c, uint64_t max, uint64_t *v) {
  size_t left = (size_t)(c->end - c->p);
  if (left == 0) return false;
  const uint8_t *p = c->p;
  size_t used;
  if (p[0] <= 0x7f) { *v = p[0]; used = 1; }
  else if (p[0] == 0xcc && left >= 2) { *v = p[1]; used = 2; }
  else if (p[0] == 0xcd && left >= 3) { *v = bp__get_be16(p + 1); used = 3; }
  else if (p[0] == 0xce && left >= 5) { *v = bp__get_be32(p + 1); used = 5; }
  else if (p[0] == 0xcf && left >= 9) { *v = bp__get_be64(p + 1); used = 9; }
  else return false;
  if (*v > max) return false;
  c->p += used;
  return true;
}

#define CANON_UINT(c, max, dst) \
  do { uint64_t v_; if (!canon_uint((c), (max), &v_)) return false; (dst) = v_; } while (0)

/* bin8 of 16 bytes. */
static inline bool canon_id(canon *c, bp_id *id) {
  if (!CANON_LIT(c, "\xc4\x10") || c->end - c->p < 16) return false;
  *id = bp_id_from_bytes(c->p);
  c->p += 16;
  return true;
}

/* array16 of 32 integers. */
static BP__ALWAYS_INLINE bool canon_hash(canon *c, uint8_t out[32]) {
  return CANON_LIT(c, "\xdc\x00\x20") && bp__mp_take_int_bytes(&c->p, c->end, out, 32);
}

static BP__ALWAYS_INLINE bool canon_str(canon *c, const char **s, size_t *len) {
  size_t left = (size_t)(c->end - c->p), hdr, n;
  if (left == 0) return false;
  const uint8_t *p = c->p;
  if ((p[0] & 0xe0) == 0xa0) { n = p[0] & 0x1f; hdr = 1; }
  else if (p[0] == 0xd9 && left >= 2) { n = p[1]; hdr = 2; }
  else if (p[0] == 0xda && left >= 3) { n = bp__get_be16(p + 1); hdr = 3; }
  else if (p[0] == 0xdb && left >= 5) { n = bp__get_be32(p + 1); hdr = 5; }
  else return false;
  if (left - hdr < n) return false;
  *s = (const char *)p + hdr;
  *len = n;
  c->p += hdr + n;
  return true;
}

#endif
