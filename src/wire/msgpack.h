/*
 * msgpack.h - the internal MessagePack writer and reader.
 *
 * The writer emits what the Rust crate's serializer (rmp-serde, named fields)
 * emits, so that re-encoding a record gives the same bytes:
 *   - every integer in its smallest form; non-negative signed values use the
 *     unsigned forms (fixint, cc, cd, ce, cf), negative ones e0..ff, d0..d3;
 *   - strings as fixstr / str8 / str16 / str32 by length;
 *   - arrays as fixarray / array16 / array32, maps as fixmap / map16 / map32;
 *   - byte strings as bin8 / bin16 / bin32.
 *
 * The reader is a pull parser over a bounded buffer. Every read checks the
 * bytes it needs against the end of the buffer first, so no input, however
 * hostile, makes it read outside [start, end). Failures are BP_ESERIAL with
 * the offset in the message.
 */
#ifndef BATPAK_WIRE_MSGPACK_H
#define BATPAK_WIRE_MSGPACK_H

#include "internal.h"

/* ---- writer ---- */
void bp__mp_put_nil(bp__buf *b);
void bp__mp_put_bool(bp__buf *b, bool v);
void bp__mp_put_uint(bp__buf *b, uint64_t v);
void bp__mp_put_int(bp__buf *b, int64_t v);
void bp__mp_put_f32(bp__buf *b, float v);
void bp__mp_put_f64(bp__buf *b, double v);
void bp__mp_put_str(bp__buf *b, const char *s, size_t len);
void bp__mp_put_cstr(bp__buf *b, const char *s);
/* A string literal (a map key): its length is known at compile time. */
#define bp__mp_put_lit(b, lit) bp__mp_put_str((b), (lit), sizeof(lit) - 1)
void bp__mp_put_bin(bp__buf *b, const void *p, size_t len);
void bp__mp_put_array(bp__buf *b, uint32_t n);
void bp__mp_put_map(bp__buf *b, uint32_t n);
/* A byte sequence the way serde writes a Vec<u8> or [u8; N]: an array with
 * one integer per byte. */
void bp__mp_put_byte_array(bp__buf *b, const uint8_t *p, size_t len);
/* A u128 the way the crate's u128_bytes helper writes it: bin8 of 16 BE bytes. */
void bp__mp_put_id(bp__buf *b, bp_id id);

/* ---- writing into room already reserved ----
 * The same forms written at o, where the caller has made room (an integer
 * takes at most 9 bytes, a string or array header 5, a byte array 5 plus 2 per
 * byte). Each returns the position after what it wrote. Records with a known
 * shape (frames) reserve once and write their fields with these. */
static inline uint8_t *bp__mp_emit_be(uint8_t *o, uint8_t tag, uint64_t v, int bytes) {
  *o++ = tag;
  for (int i = bytes - 1; i >= 0; i--) *o++ = (uint8_t)(v >> (8 * i));
  return o;
}
static inline uint8_t *bp__mp_emit_uint(uint8_t *o, uint64_t v) {
  if (v <= 0x7f) { *o = (uint8_t)v; return o + 1; }
  if (v <= 0xff) return bp__mp_emit_be(o, 0xcc, v, 1);
  if (v <= 0xffff) return bp__mp_emit_be(o, 0xcd, v, 2);
  if (v <= 0xffffffffu) return bp__mp_emit_be(o, 0xce, v, 4);
  return bp__mp_emit_be(o, 0xcf, v, 8);
}
static inline uint8_t *bp__mp_emit_int(uint8_t *o, int64_t v) {
  if (v >= 0) return bp__mp_emit_uint(o, (uint64_t)v);
  if (v >= -32) { *o = (uint8_t)(int8_t)v; return o + 1; }
  if (v >= INT8_MIN) return bp__mp_emit_be(o, 0xd0, (uint64_t)v, 1);
  if (v >= INT16_MIN) return bp__mp_emit_be(o, 0xd1, (uint64_t)v, 2);
  if (v >= INT32_MIN) return bp__mp_emit_be(o, 0xd2, (uint64_t)v, 4);
  return bp__mp_emit_be(o, 0xd3, (uint64_t)v, 8);
}
static inline uint8_t *bp__mp_emit_str_header(uint8_t *o, size_t len) {
  if (len < 32) { *o = (uint8_t)(0xa0 | len); return o + 1; }
  if (len <= 0xff) return bp__mp_emit_be(o, 0xd9, len, 1);
  if (len <= 0xffff) return bp__mp_emit_be(o, 0xda, len, 2);
  return bp__mp_emit_be(o, 0xdb, len, 4);
}
static inline uint8_t *bp__mp_emit_array_header(uint8_t *o, size_t n) {
  if (n < 16) { *o = (uint8_t)(0x90 | n); return o + 1; }
  if (n <= 0xffff) return bp__mp_emit_be(o, 0xdc, n, 2);
  return bp__mp_emit_be(o, 0xdd, n, 4);
}
/* An array with one integer per byte (bp__mp_put_byte_array). */
uint8_t *bp__mp_emit_byte_array(uint8_t *o, const uint8_t *p, size_t len);
/* The same by the code for the given BP__CPU_* features (those the processor
 * lacks are ignored): for tests of every path. Both may write up to
 * 5 + 2 * len bytes at o, the most the array can take, whatever its length. */
uint8_t *bp__mp_emit_byte_array_using(unsigned cpu, uint8_t *o, const uint8_t *p, size_t len);

/* ---- reader ---- */
typedef enum bp__mp_type {
  BP__MP_NIL, BP__MP_BOOL, BP__MP_UINT, BP__MP_INT, BP__MP_FLOAT,
  BP__MP_STR, BP__MP_BIN, BP__MP_ARRAY, BP__MP_MAP, BP__MP_EXT
} bp__mp_type;

typedef struct bp__mp_value {
  bp__mp_type type;
  bool b;                 /* BOOL */
  uint64_t u;             /* UINT (and non-negative values of any integer form) */
  int64_t i;              /* INT: a negative integer */
  double f;               /* FLOAT (float32 widened) */
  bool is_f32;
  const uint8_t *ptr;     /* STR, BIN, EXT: the bytes, inside the input */
  uint32_t len;           /* STR, BIN, EXT length; ARRAY items; MAP pairs */
  int8_t ext_type;
} bp__mp_value;

typedef struct bp__mp_reader {
  const uint8_t *start, *p, *end;
} bp__mp_reader;

void bp__mp_reader_init(bp__mp_reader *r, const void *data, size_t len);
static inline size_t bp__mp_offset(const bp__mp_reader *r) { return (size_t)(r->p - r->start); }
static inline size_t bp__mp_remaining(const bp__mp_reader *r) { return (size_t)(r->end - r->p); }

/* Reads one token. For arrays and maps only the header is consumed; len says
 * how many items (or pairs) follow. */
bp_status bp__mp_next(bp__mp_reader *r, bp__mp_value *v);
/* Skips one complete value, nested containers included. */
bp_status bp__mp_skip(bp__mp_reader *r);

/* Typed reads: each fails BP_ESERIAL when the next value is of another type or
 * does not fit the destination. */
bp_status bp__mp_read_map(bp__mp_reader *r, uint32_t *pairs);
bp_status bp__mp_read_array(bp__mp_reader *r, uint32_t *items);
bp_status bp__mp_read_str(bp__mp_reader *r, const char **s, uint32_t *len);
bp_status bp__mp_read_u64(bp__mp_reader *r, uint64_t *out);
bp_status bp__mp_read_u32(bp__mp_reader *r, uint32_t *out);
bp_status bp__mp_read_u16(bp__mp_reader *r, uint16_t *out);
bp_status bp__mp_read_u8(bp__mp_reader *r, uint8_t *out);
bp_status bp__mp_read_i64(bp__mp_reader *r, int64_t *out);
/* nil -> false; returns true in *present when a non-nil value follows (not consumed). */
bp_status bp__mp_read_nil_or(bp__mp_reader *r, bool *present);
/* A fixed-size byte string written as bin or as an array of integers 0..255. */
bp_status bp__mp_read_fixed_bytes(bp__mp_reader *r, uint8_t *out, size_t n);
/* Decodes n array elements that are each a positive fixint or cc xx (the
 * forms every writer uses for byte arrays) into out and moves *pp past them.
 * False when an element has another form or the input ends first: *pp is
 * then unchanged, out partly written, and no error is recorded. */
bool bp__mp_take_int_bytes(const uint8_t **pp, const uint8_t *end, uint8_t *out, size_t n);
/* The same, one element at a time: the definition the windows must agree with
 * (they finish with it; tests and fuzzing compare the two). */
bool bp__mp_take_int_bytes_each(const uint8_t **pp, const uint8_t *end, uint8_t *out, size_t n);
/* bp__mp_take_int_bytes by the code for the given BP__CPU_* features (those
 * the processor lacks are ignored): for tests of every path. */
bool bp__mp_take_int_bytes_using(unsigned cpu, const uint8_t **pp, const uint8_t *end, uint8_t *out, size_t n);
/* A u128 id: bin of 16 bytes or an array of 16 integers. */
bp_status bp__mp_read_id(bp__mp_reader *r, bp_id *out);
/* A byte string of any length, as bin (pointing into the input, *copied false)
 * or as an array of integers (decoded into scratch). scratch may be NULL to
 * only validate and skip: then *ptr is NULL and *len the length. */
bp_status bp__mp_read_bytes(bp__mp_reader *r, bp__buf *scratch, const uint8_t **ptr, size_t *len);

/* A record's field names with their lengths, for fast key lookup. */
typedef struct bp__field {
  const char *name;
  uint32_t len;
} bp__field;
#define BP__FIELD(lit) {lit, sizeof(lit) - 1}

/* The index of key among n fields, or -1. Fields are usually written in
 * declaration order, so the hint (the position of the key in its map) is
 * tried first. */
static inline int bp__field_find(const bp__field *f, int n, uint32_t hint, const char *key, uint32_t len) {
  if (hint < (uint32_t)n && f[hint].len == len && memcmp(f[hint].name, key, len) == 0) return (int)hint;
  for (int i = 0; i < n; i++)
    if (f[i].len == len && memcmp(f[i].name, key, len) == 0) return i;
  return -1;
}

/* Records a field as seen; a field seen twice is an error, as serde rejects
 * duplicate fields. record names the record in the message. */
static inline bp_status bp__field_mark_seen(unsigned *seen, int idx, const bp__field *f, const char *record) {
  if (*seen & (1u << idx)) return bp__fail(BP_ESERIAL, "%s: duplicate field \"%s\"", record, f[idx].name);
  *seen |= 1u << idx;
  return BP_OK;
}

/* Fails naming the first field whose bit in required is missing from seen. */
static inline bp_status bp__field_require(unsigned seen, unsigned required, const bp__field *f, const char *record) {
  unsigned missing = required & ~seen;
  if (!missing) return BP_OK;
  int i = 0;
  while (!(missing & (1u << i))) i++;
  return bp__fail(BP_ESERIAL, "%s: missing field \"%s\"", record, f[i].name);
}

/* Compares a key just read with a NUL-terminated literal. */
static inline bool bp__mp_key_is(const char *key, uint32_t len, const char *lit) {
  size_t n = strlen(lit);
  return n == len && memcmp(key, lit, n) == 0;
}

#endif /* BATPAK_WIRE_MSGPACK_H */
