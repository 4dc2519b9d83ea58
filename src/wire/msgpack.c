/* msgpack.c - MessagePack writer and bounds-checked reader (see msgpack.h). */
#include "wire/msgpack.h"

#include <pthread.h>
#include <stdatomic.h>

/* ------------------------------------------------------------------ writer */

static inline void put_tag_be(bp__buf *b, uint8_t tag, uint64_t v, int bytes) {
  if (!bp__buf_reserve(b, 1 + (size_t)bytes)) return;
  b->len = (size_t)(bp__mp_emit_be(b->data + b->len, tag, v, bytes) - b->data);
}

void bp__mp_put_nil(bp__buf *b) { bp__buf_put1(b, 0xc0); }
void bp__mp_put_bool(bp__buf *b, bool v) { bp__buf_put1(b, v ? 0xc3 : 0xc2); }

void bp__mp_put_uint(bp__buf *b, uint64_t v) {
  if (bp__buf_reserve(b, 9)) b->len = (size_t)(bp__mp_emit_uint(b->data + b->len, v) - b->data);
}

void bp__mp_put_int(bp__buf *b, int64_t v) {
  if (bp__buf_reserve(b, 9)) b->len = (size_t)(bp__mp_emit_int(b->data + b->len, v) - b->data);
}

void bp__mp_put_f32(bp__buf *b, float v) {
  uint32_t bits;
  memcpy(&bits, &v, 4);
  put_tag_be(b, 0xca, bits, 4);
}

void bp__mp_put_f64(bp__buf *b, double v) {
  uint64_t bits;
  memcpy(&bits, &v, 8);
  put_tag_be(b, 0xcb, bits, 8);
}

void bp__mp_put_str(bp__buf *b, const char *s, size_t len) {
  if (len > SIZE_MAX - 5 || !bp__buf_reserve(b, 5 + len)) return;
  uint8_t *o = bp__mp_emit_str_header(b->data + b->len, len);
  if (len) memcpy(o, s, len);
  b->len = (size_t)(o + len - b->data);
}

void bp__mp_put_cstr(bp__buf *b, const char *s) { bp__mp_put_str(b, s, strlen(s)); }

void bp__mp_put_bin(bp__buf *b, const void *p, size_t len) {
  if (len <= 0xff) put_tag_be(b, 0xc4, len, 1);
  else if (len <= 0xffff) put_tag_be(b, 0xc5, len, 2);
  else put_tag_be(b, 0xc6, len, 4);
  bp__buf_append(b, p, len);
}

void bp__mp_put_array(bp__buf *b, uint32_t n) {
  if (bp__buf_reserve(b, 5)) b->len = (size_t)(bp__mp_emit_array_header(b->data + b->len, n) - b->data);
}

void bp__mp_put_map(bp__buf *b, uint32_t n) {
  if (n < 16) bp__buf_put1(b, (uint8_t)(0x80 | n));
  else if (n <= 0xffff) put_tag_be(b, 0xde, n, 2);
  else put_tag_be(b, 0xdf, n, 4);
}

/* The elements of a byte array, without its header: bytes >= 0x80 take the
 * cc prefix. The processor-specific versions (emit_for, with the decoders
 * below) may write up to 2 * len bytes, whatever the result's length. */
typedef uint8_t *(*emit_fn)(uint8_t *o, const uint8_t *p, size_t len);
static emit_fn emit_for(unsigned cpu);
static _Atomic(emit_fn) emit_impl;

static uint8_t *emit_bytes_portable(uint8_t *o, const uint8_t *p, size_t len) {
  for (size_t i = 0; i < len; i++) {
    /* Without branches on the data. */
    uint8_t c = p[i];
    size_t big = c >> 7;
    o[0] = 0xcc;
    o[big] = c;
    o += 1 + big;
  }
  return o;
}

uint8_t *bp__mp_emit_byte_array(uint8_t *o, const uint8_t *p, size_t len) {
  o = bp__mp_emit_array_header(o, len);
  if (len < 8) return emit_bytes_portable(o, p, len);
  emit_fn emit = atomic_load_explicit(&emit_impl, memory_order_acquire);
  if (!emit) {
    emit = emit_for(bp__cpu_features());
    atomic_store_explicit(&emit_impl, emit, memory_order_release);
  }
  return emit(o, p, len);
}

uint8_t *bp__mp_emit_byte_array_using(unsigned cpu, uint8_t *o, const uint8_t *p, size_t len) {
  return emit_for(cpu & bp__cpu_features())(bp__mp_emit_array_header(o, len), p, len);
}

void bp__mp_put_byte_array(bp__buf *b, const uint8_t *p, size_t len) {
  /* Worst case two bytes per element; reserve once, then write directly. */
  if (len > (SIZE_MAX - 5) / 2 || !bp__buf_reserve(b, 5 + 2 * len)) return;
  b->len = (size_t)(bp__mp_emit_byte_array(b->data + b->len, p, len) - b->data);
}

void bp__mp_put_id(bp__buf *b, bp_id id) {
  uint8_t raw[18] = {0xc4, 16};
  bp_id_to_bytes(id, raw + 2);
  bp__buf_append(b, raw, sizeof raw);
}

/* ------------------------------------------------------------------ reader */

void bp__mp_reader_init(bp__mp_reader *r, const void *data, size_t len) {
  r->start = r->p = data;
  r->end = r->start + len;
}

static bp_status truncated(const bp__mp_reader *r, size_t need) {
  return bp__fail(BP_ESERIAL, "msgpack: truncated at offset %zu (need %zu more bytes, %zu left)",
                  bp__mp_offset(r), need, bp__mp_remaining(r));
}

static bp_status wrong_type(const bp__mp_reader *r, size_t at, const char *want,
                            const bp__mp_value *v) {
  static const char *names[] = {"nil", "bool", "integer", "negative integer", "float",
                                "string", "binary", "array", "map", "extension"};
  (void)r;
  return bp__fail(BP_ESERIAL, "msgpack: expected %s at offset %zu, found %s", want, at,
                  names[v->type]);
}

static inline uint64_t read_be(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v = (v << 8) | p[i];
  return v;
}

bp_status bp__mp_next(bp__mp_reader *r, bp__mp_value *v) {
  if (r->p >= r->end) return truncated(r, 1);
  uint8_t t = *r->p;
  size_t left = bp__mp_remaining(r) - 1;
  const uint8_t *q = r->p + 1;
  int width = 0;          /* bytes of the length or value field after the tag */
  v->len = 0;
  v->ptr = NULL;
  v->is_f32 = false;

  if (t <= 0x7f) { v->type = BP__MP_UINT; v->u = t; r->p = q; return BP_OK; }
  if (t >= 0xe0) { v->type = BP__MP_INT; v->i = (int8_t)t; r->p = q; return BP_OK; }
  if ((t & 0xf0) == 0x80) { v->type = BP__MP_MAP; v->len = t & 0x0f; r->p = q; return BP_OK; }
  if ((t & 0xf0) == 0x90) { v->type = BP__MP_ARRAY; v->len = t & 0x0f; r->p = q; return BP_OK; }
  if ((t & 0xe0) == 0xa0) { v->type = BP__MP_STR; v->len = t & 0x1f; goto payload; }

  switch (t) {
    case 0xc0: v->type = BP__MP_NIL; r->p = q; return BP_OK;
    case 0xc2: case 0xc3: v->type = BP__MP_BOOL; v->b = (t == 0xc3); r->p = q; return BP_OK;
    case 0xc4: case 0xc5: case 0xc6:
      v->type = BP__MP_BIN; width = 1 << (t - 0xc4); goto length;
    case 0xd9: case 0xda: case 0xdb:
      v->type = BP__MP_STR; width = 1 << (t - 0xd9); goto length;
    case 0xdc: case 0xdd:
      v->type = BP__MP_ARRAY; width = (t == 0xdc) ? 2 : 4; goto count;
    case 0xde: case 0xdf:
      v->type = BP__MP_MAP; width = (t == 0xde) ? 2 : 4; goto count;
    case 0xcc: case 0xcd: case 0xce: case 0xcf:
      width = 1 << (t - 0xcc);
      if (left < (size_t)width) return truncated(r, (size_t)width + 1);
      v->type = BP__MP_UINT; v->u = read_be(q, width);
      r->p = q + width; return BP_OK;
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
      width = 1 << (t - 0xd0);
      if (left < (size_t)width) return truncated(r, (size_t)width + 1);
      uint64_t raw = read_be(q, width);
      int64_t s;
      if (width == 1) s = (int8_t)raw;
      else if (width == 2) s = (int16_t)raw;
      else if (width == 4) s = (int32_t)raw;
      else memcpy(&s, &raw, 8);
      if (s >= 0) { v->type = BP__MP_UINT; v->u = (uint64_t)s; }
      else { v->type = BP__MP_INT; v->i = s; }
      r->p = q + width; return BP_OK;
    }
    case 0xca: {
      if (left < 4) return truncated(r, 5);
      uint32_t bits = (uint32_t)read_be(q, 4);
      float f;
      memcpy(&f, &bits, 4);
      v->type = BP__MP_FLOAT; v->f = f; v->is_f32 = true;
      r->p = q + 4; return BP_OK;
    }
    case 0xcb: {
      if (left < 8) return truncated(r, 9);
      uint64_t bits = read_be(q, 8);
      memcpy(&v->f, &bits, 8);
      v->type = BP__MP_FLOAT;
      r->p = q + 8; return BP_OK;
    }
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
      /* fixext 1, 2, 4, 8, 16 */
      if (left < 1) return truncated(r, 2);
      v->type = BP__MP_EXT; v->ext_type = (int8_t)q[0]; v->len = 1u << (t - 0xd4);
      q += 1; left -= 1;
      if (left < v->len) return truncated(r, v->len);
      v->ptr = q; r->p = q + v->len; return BP_OK;
    case 0xc7: case 0xc8: case 0xc9:
      width = 1 << (t - 0xc7);
      if (left < (size_t)width + 1) return truncated(r, (size_t)width + 2);
      v->type = BP__MP_EXT; v->len = (uint32_t)read_be(q, width);
      v->ext_type = (int8_t)q[width];
      q += width + 1; left -= (size_t)width + 1;
      if (left < v->len) return truncated(r, v->len);
      v->ptr = q; r->p = q + v->len; return BP_OK;
    default:  /* 0xc1 is never used */
      return bp__fail(BP_ESERIAL, "msgpack: invalid type byte 0x%02x at offset %zu", t,
                      bp__mp_offset(r));
  }

length:
  if (left < (size_t)width) return truncated(r, (size_t)width + 1);
  v->len = (uint32_t)read_be(q, width);
  q += width;
  left -= (size_t)width;
payload:
  if (left < v->len) return truncated(r, v->len);
  v->ptr = q;
  r->p = q + v->len;
  return BP_OK;

count:
  if (left < (size_t)width) return truncated(r, (size_t)width + 1);
  v->len = (uint32_t)read_be(q, width);
  r->p = q + width;
  return BP_OK;
}

bp_status bp__mp_skip(bp__mp_reader *r) {
  /* Items still to skip. Every item takes at least one byte, so a count larger
   * than the bytes left is malformed; this also bounds the loop. */
  uint64_t pending = 1;
  bp__mp_value v;
  while (pending > 0) {
    bp_status st = bp__mp_next(r, &v);
    if (st) return st;
    pending--;
    if (v.type == BP__MP_ARRAY) pending += v.len;
    else if (v.type == BP__MP_MAP) pending += 2ull * v.len;
    if (pending > bp__mp_remaining(r))
      return bp__fail(BP_ESERIAL, "msgpack: container at offset %zu claims %llu items, only %zu bytes left",
                      bp__mp_offset(r), (unsigned long long)pending, bp__mp_remaining(r));
  }
  return BP_OK;
}

static bp_status expect(bp__mp_reader *r, bp__mp_type type, const char *want, bp__mp_value *v) {
  size_t at = bp__mp_offset(r);
  bp_status st = bp__mp_next(r, v);
  if (st) return st;
  if (v->type != type) return wrong_type(r, at, want, v);
  return BP_OK;
}

bp_status bp__mp_read_map(bp__mp_reader *r, uint32_t *pairs) {
  bp__mp_value v;
  bp_status st = expect(r, BP__MP_MAP, "map", &v);
  if (!st) *pairs = v.len;
  return st;
}

bp_status bp__mp_read_array(bp__mp_reader *r, uint32_t *items) {
  bp__mp_value v;
  bp_status st = expect(r, BP__MP_ARRAY, "array", &v);
  if (!st) *items = v.len;
  return st;
}

bp_status bp__mp_read_str(bp__mp_reader *r, const char **s, uint32_t *len) {
  /* Keys and names are mostly short: a fixstr is read in place. */
  if (r->p < r->end && (*r->p & 0xe0) == 0xa0 && (size_t)(r->end - r->p) > (size_t)(*r->p & 0x1f)) {
    *len = *r->p & 0x1f;
    *s = (const char *)r->p + 1;
    r->p += 1 + *len;
    return BP_OK;
  }
  bp__mp_value v;
  bp_status st = expect(r, BP__MP_STR, "string", &v);
  if (!st) { *s = (const char *)v.ptr; *len = v.len; }
  return st;
}

static bp_status read_unsigned(bp__mp_reader *r, uint64_t max, const char *what, uint64_t *out) {
  if (r->p < r->end && *r->p <= 0x7f && *r->p <= max) { /* a positive fixint */
    *out = *r->p++;
    return BP_OK;
  }
  size_t at = bp__mp_offset(r);
  bp__mp_value v;
  bp_status st = bp__mp_next(r, &v);
  if (st) return st;
  if (v.type != BP__MP_UINT) return wrong_type(r, at, what, &v);
  if (v.u > max)
    return bp__fail(BP_ESERIAL, "msgpack: %s at offset %zu out of range (%llu)", what, at,
                    (unsigned long long)v.u);
  *out = v.u;
  return BP_OK;
}

bp_status bp__mp_read_u64(bp__mp_reader *r, uint64_t *out) {
  return read_unsigned(r, UINT64_MAX, "u64", out);
}

#define DEFINE_READ_UNSIGNED(name, type, max, what)          \
  bp_status name(bp__mp_reader *r, type *out) {              \
    uint64_t v = 0;                                          \
    bp_status st = read_unsigned(r, max, what, &v);          \
    if (!st) *out = (type)v;                                 \
    return st;                                               \
  }
DEFINE_READ_UNSIGNED(bp__mp_read_u32, uint32_t, UINT32_MAX, "u32")
DEFINE_READ_UNSIGNED(bp__mp_read_u16, uint16_t, UINT16_MAX, "u16")
DEFINE_READ_UNSIGNED(bp__mp_read_u8, uint8_t, UINT8_MAX, "u8")

bp_status bp__mp_read_i64(bp__mp_reader *r, int64_t *out) {
  size_t at = bp__mp_offset(r);
  bp__mp_value v;
  bp_status st = bp__mp_next(r, &v);
  if (st) return st;
  if (v.type == BP__MP_INT) { *out = v.i; return BP_OK; }
  if (v.type != BP__MP_UINT) return wrong_type(r, at, "i64", &v);
  if (v.u > (uint64_t)INT64_MAX)
    return bp__fail(BP_ESERIAL, "msgpack: i64 at offset %zu out of range", at);
  *out = (int64_t)v.u;
  return BP_OK;
}

bp_status bp__mp_read_nil_or(bp__mp_reader *r, bool *present) {
  if (r->p >= r->end) return truncated(r, 1);
  if (*r->p == 0xc0) { r->p++; *present = false; }
  else *present = true;
  return BP_OK;
}

/* Byte arrays written as integer arrays (what the crate does with hashes, ids
 * and payloads) are decoded 8 input bytes at a time (with SSSE3 and POPCNT,
 * 64 at a time while that many remain: blocks_ssse3, or blocks_bmi2 where
 * PEXT is fast). Every element is a
 * positive fixint (one byte) or cc xx (two); so for a window that starts on
 * an element, which bytes hold values depends only on which bytes are 0xcc.
 * windows[m], m having bit j set when byte j is 0xcc, lists the value bytes,
 * how many there are, how many bytes the window uses (7 when its last byte
 * starts a two-byte element) and which bytes start elements (those must be
 * below 0x80 or 0xcc). */
typedef struct int_window {
  uint8_t count, consumed, starts;
  uint8_t pos[8];
} int_window;
static int_window windows[256];
static pthread_once_t windows_once = PTHREAD_ONCE_INIT;

static void build_windows(void) {
  for (unsigned m = 0; m < 256; m++) {
    int_window *w = &windows[m];
    unsigned j = 0;
    while (j < 8) {
      bool two = (m >> j) & 1;
      if (two && j == 7) break;
      w->starts |= (uint8_t)(1u << j);
      w->pos[w->count++] = (uint8_t)(j + two);
      j += 1 + two;
    }
    w->consumed = (uint8_t)j;
  }
}

/* The high bit of each byte of v (little-endian order) as 8 bits. */
static inline unsigned high_bits(uint64_t v) {
  return (unsigned)((((v >> 7) & 0x0101010101010101ull) * 0x0102040810204080ull) >> 56);
}

/* How much of window w to use when only `want` more elements are needed:
 * the element count, the bytes consumed and which of them start elements.
 * The last window of an array uses part of its 8 bytes, so arrays need no
 * element-by-element tail. */
static inline unsigned window_take(const int_window *w, size_t want, unsigned *consumed, unsigned *starts) {
  if (want >= w->count) {
    *consumed = w->consumed;
    *starts = w->starts;
    return w->count;
  }
  unsigned k = (unsigned)want;
  *consumed = w->pos[k - 1] + 1u; /* an element ends with its value byte */
  *starts = w->starts & ((1u << *consumed) - 1u);
  return k;
}

/* Stores k decoded bytes (of the 8 in vals) at out + i, out having n bytes. */
static inline void window_store(uint8_t *out, size_t i, size_t n, const uint8_t vals[8], unsigned k) {
  if (n - i >= 8) memcpy(out + i, vals, 8);
  else memcpy(out + i, vals, k);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_X86_SIMD 1 /* the SSSE3, POPCNT and BMI2 code below: decoders and a writer of byte arrays */
/* The windows with SSSE3: the masks from byte compares, the gather one
 * shuffle. Returns the elements decoded; *pp moves past them. */
__attribute__((target("ssse3"))) static size_t windows_ssse3(const uint8_t **pp, const uint8_t *end, uint8_t *out,
                                                             size_t n) {
  const uint8_t *p = *pp;
  size_t i = 0;
  const __m128i cc = _mm_set1_epi8((char)0xcc);
  while (i < n && end - p >= 8) {
    __m128i src = _mm_loadl_epi64((const __m128i *)(const void *)p);
    unsigned ccbits = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(src, cc)) & 0xff;
    unsigned high = (unsigned)_mm_movemask_epi8(src) & 0xff;
    const int_window *win = &windows[ccbits];
    unsigned consumed, starts, k = window_take(win, n - i, &consumed, &starts);
    if (high & ~ccbits & starts) break;
    __m128i ctl = _mm_loadl_epi64((const __m128i *)(const void *)win->pos);
    uint8_t vals[8];
    _mm_storel_epi64((__m128i *)(void *)vals, _mm_shuffle_epi8(src, ctl));
    window_store(out, i, n, vals, k);
    i += k;
    p += consumed;
  }
  *pp = p;
  return i;
}

/*
 * 64 bytes at a time. Which bytes are prefixes (a 0xcc that starts an
 * element) follows from the 0xcc mask alone, without walking the elements:
 * a run of 0xcc bytes always begins at an element start (the byte before it
 * ends an element), so its bytes alternate prefix, value (0xcc), prefix...,
 * and the byte after an odd-length run is the value of its last prefix.
 * Adding each run's lowest bit to the mask, for the runs that begin at an odd
 * position, clears those runs and sets the bit after each, so the mask XOR
 * the sum marks the odd-started runs and their following byte; a byte after
 * a 0xcc is a value when its position differs in parity from its run's start.
 * Every byte that is not a prefix is one element's value: the values are
 * gathered eight input bytes at a time, a shuffle each, with no step
 * depending on the one before but the count of values so far.
 */
static uint8_t gather_ctl[256][8]; /* the set bits of a byte, in order, then 0x80 */

static void build_gather(void) {
  for (unsigned m = 0; m < 256; m++) {
    unsigned k = 0;
    for (unsigned j = 0; j < 8; j++)
      if ((m >> j) & 1) gather_ctl[m][k++] = (uint8_t)j;
    while (k < 8) gather_ctl[m][k++] = 0x80;
  }
}

#define ODD_BITS 0xaaaaaaaaaaaaaaaaull

/* Which of 64 bytes hold values (the rest are prefixes), from the 0xcc bytes
 * among them (ccs) and those of 0x80 and more (high); *bad gets the bytes
 * that are single-byte elements of 0x80 and more (not this form). */
static inline uint64_t block_values(uint64_t ccs, uint64_t high, uint64_t *bad) {
  uint64_t run_starts = ccs & ~(ccs << 1);
  uint64_t odd_runs = ccs ^ (ccs + (run_starts & ODD_BITS)); /* odd-started runs, and the byte after each */
  uint64_t escaped = (ccs << 1) & ((odd_runs & ~ODD_BITS) | (~odd_runs & ODD_BITS));
  *bad = high & ~ccs & ~escaped;
  return ~(ccs & ~escaped);
}

__attribute__((target("ssse3,popcnt"))) static size_t blocks_ssse3(const uint8_t **pp, const uint8_t *end,
                                                                    uint8_t *out, size_t n) {
  const uint8_t *p = *pp;
  size_t i = 0;
  const __m128i cc = _mm_set1_epi8((char)0xcc);
  while (i < n && end - p >= 64) {
    uint64_t ccs = 0, high = 0;
    for (int b = 0; b < 4; b++) {
      __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + 16 * b));
      ccs |= (uint64_t)(uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(v, cc)) << (16 * b);
      high |= (uint64_t)(uint32_t)_mm_movemask_epi8(v) << (16 * b);
    }
    uint64_t bad, values = block_values(ccs, high, &bad);
    size_t want = n - i, block_first = i;
    for (unsigned c = 0; c < 64; c += 8) {
      unsigned vm = (unsigned)(values >> c) & 0xff, bm = (unsigned)(bad >> c) & 0xff;
      unsigned k = (unsigned)__builtin_popcount(vm);
      unsigned used = 8;
      if (k >= want) { /* the last element ends in these 8 bytes */
        used = gather_ctl[vm][want - 1] + 1u;
        vm &= (1u << used) - 1u;
        bm &= (1u << used) - 1u;
        k = (unsigned)want;
      }
      if (bm) {
        *pp = p; /* not this form: the caller decides, from this block on */
        return block_first;
      }
      __m128i src = _mm_loadl_epi64((const __m128i *)(const void *)(p + c));
      __m128i ctl = _mm_loadl_epi64((const __m128i *)(const void *)gather_ctl[vm]);
      uint8_t vals[8];
      _mm_storel_epi64((__m128i *)(void *)vals, _mm_shuffle_epi8(src, ctl));
      window_store(out, i, n, vals, k);
      i += k;
      want -= k;
      if (want == 0) {
        *pp = p + c + used;
        return i;
      }
    }
    /* A prefix in the last byte: its element starts the next block. */
    p += 64 - (unsigned)(~values >> 63);
  }
  *pp = p;
  return i + windows_ssse3(pp, end, out + i, n - i);
}

/*
 * The same blocks with BMI2, where PDEP and PEXT are fast (bp__cpu_features):
 * the last element's byte comes from one PDEP instead of a count per 8 bytes,
 * and each 8 bytes' values are packed by one PEXT under a mask of their
 * value bytes.
 */
static uint64_t byte_mask[256]; /* bit j of the index set: byte j all ones */

static void build_byte_masks(void) {
  for (unsigned m = 0; m < 256; m++)
    for (unsigned j = 0; j < 8; j++)
      if ((m >> j) & 1) byte_mask[m] |= 0xffull << (8 * j);
}

/* d[0..n) = s[0..n) for n <= 64, with no call. */
__attribute__((target("avx2"))) static inline void copy_upto64(uint8_t *d, const uint8_t *s, size_t n) {
  if (n >= 32) {
    __m256i a = _mm256_loadu_si256((const __m256i *)(const void *)s);
    __m256i b = _mm256_loadu_si256((const __m256i *)(const void *)(s + n - 32));
    _mm256_storeu_si256((__m256i *)(void *)d, a);
    _mm256_storeu_si256((__m256i *)(void *)(d + n - 32), b);
  } else if (n >= 16) {
    __m128i a = _mm_loadu_si128((const __m128i *)(const void *)s);
    __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(s + n - 16));
    _mm_storeu_si128((__m128i *)(void *)d, a);
    _mm_storeu_si128((__m128i *)(void *)(d + n - 16), b);
  } else if (n >= 8) {
    uint64_t a = bp__get_le64(s), b = bp__get_le64(s + n - 8);
    memcpy(d, &a, 8);
    memcpy(d + n - 8, &b, 8);
  } else {
    for (size_t j = 0; j < n; j++) d[j] = s[j];
  }
}

__attribute__((target("avx2,bmi,bmi2,popcnt"))) static size_t blocks_bmi2(const uint8_t **pp, const uint8_t *end,
                                                                        uint8_t *out, size_t n) {
  const uint8_t *p = *pp;
  size_t i = 0;
  const __m256i cc = _mm256_set1_epi8((char)0xcc);
  while (i < n && end - p >= 64) {
    __m256i lo = _mm256_loadu_si256((const __m256i *)(const void *)p);
    __m256i hi = _mm256_loadu_si256((const __m256i *)(const void *)(p + 32));
    uint64_t ccs = (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(lo, cc)) |
                   (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(hi, cc)) << 32;
    uint64_t high = (uint64_t)(uint32_t)_mm256_movemask_epi8(lo) | (uint64_t)(uint32_t)_mm256_movemask_epi8(hi) << 32;
    uint64_t bad, values = block_values(ccs, high, &bad);
    size_t want = n - i, count = (size_t)__builtin_popcountll(values), used;
    if (count >= want) { /* the last element ends in this block */
      uint64_t last = _pdep_u64(1ull << (want - 1), values);
      uint64_t upto = (last << 1) - 1; /* all ones when last is bit 63 */
      values &= upto;
      bad &= upto;
      count = want;
      used = (size_t)__builtin_ctzll(last) + 1;
    } else {
      used = 64 - (size_t)(~values >> 63); /* a prefix in the last byte starts the next block */
    }
    if (bad) {
      *pp = p; /* not this form: the caller decides, from this block on */
      return i;
    }
    /* Each 8 bytes' values land at the count so far, 8 bytes written each
     * time: straight into out while 64 bytes of room remain, else via tmp. */
    uint8_t tmp[64];
    uint8_t *dst = want >= 64 ? out + i : tmp;
    size_t k = 0;
    for (unsigned c = 0; c < 64; c += 8) {
      unsigned vm = (unsigned)(values >> c) & 0xff;
      uint64_t packed = _pext_u64(bp__get_le64(p + c), byte_mask[vm]);
      memcpy(dst + k, &packed, 8);
      k += (size_t)__builtin_popcount(vm);
    }
    if (dst == tmp) copy_upto64(out + i, tmp, count);
    i += count;
    p += used;
  }
  *pp = p;
  return i + windows_ssse3(pp, end, out + i, n - i);
}

/*
 * Writing byte arrays with SSSE3, 8 bytes at a time: which of them are 0x80
 * or more (the sign bits) decides where each lands and where the cc prefixes
 * go, so one shuffle spreads the 8 bytes over up to 16 and the prefixes fill
 * the gaps. spread_ctl[h] gives, for each output byte, its source byte, or
 * 0x80 for a prefix (and for the unused bytes at the end, which the next
 * store overwrites or the caller's worst-case room absorbs).
 */
static uint8_t spread_ctl[256][16];

static void build_spread(void) {
  for (unsigned h = 0; h < 256; h++) {
    unsigned k = 0;
    for (unsigned j = 0; j < 8; j++) {
      if ((h >> j) & 1) spread_ctl[h][k++] = 0x80;
      spread_ctl[h][k++] = (uint8_t)j;
    }
    while (k < 16) spread_ctl[h][k++] = 0x80;
  }
}

__attribute__((target("ssse3,popcnt"))) static uint8_t *emit_bytes_ssse3(uint8_t *o, const uint8_t *p, size_t len) {
  const __m128i cc = _mm_set1_epi8((char)0xcc), prefix = _mm_set1_epi8((char)0x80);
  size_t i = 0;
  for (; len - i >= 8; i += 8) {
    __m128i x = _mm_loadl_epi64((const __m128i *)(const void *)(p + i));
    unsigned h = (unsigned)_mm_movemask_epi8(x) & 0xff;
    __m128i ctl = _mm_loadu_si128((const __m128i *)(const void *)spread_ctl[h]);
    __m128i out = _mm_or_si128(_mm_shuffle_epi8(x, ctl), _mm_and_si128(_mm_cmpeq_epi8(ctl, prefix), cc));
    _mm_storeu_si128((__m128i *)(void *)o, out);
    o += 8 + (unsigned)__builtin_popcount(h);
  }
  return emit_bytes_portable(o, p + i, len - i);
}
#endif

/* The windows in portable code: the masks by word arithmetic. Same contract
 * as windows_ssse3. */
static size_t windows_scalar(const uint8_t **pp, const uint8_t *end, uint8_t *out, size_t n) {
  const uint8_t *p = *pp;
  size_t i = 0;
  while (i < n && end - p >= 8) {
    uint64_t w = bp__get_le64(p);
    uint64_t x = w ^ 0xccccccccccccccccull;
    uint64_t zero = ~(((x & 0x7f7f7f7f7f7f7f7full) + 0x7f7f7f7f7f7f7f7full) | x) & 0x8080808080808080ull;
    const int_window *win = &windows[high_bits(zero)];
    unsigned bad = high_bits(w & ~zero & 0x8080808080808080ull); /* >= 0x80 and not 0xcc */
    unsigned consumed, starts, k = window_take(win, n - i, &consumed, &starts);
    if (bad & starts) break; /* not this form: the caller decides */
    uint8_t vals[8];
    for (int j = 0; j < 8; j++) vals[j] = p[win->pos[j]];
    window_store(out, i, n, vals, k);
    i += k;
    p += consumed;
  }
  *pp = p;
  return i;
}

typedef size_t (*windows_fn)(const uint8_t **pp, const uint8_t *end, uint8_t *out, size_t n);

static void build_tables(void) {
  build_windows();
#ifdef HAVE_X86_SIMD
  build_gather();
  build_byte_masks();
  build_spread();
#endif
}

/* The windows for the given BP__CPU_* features. */
static windows_fn windows_for(unsigned cpu) {
  pthread_once(&windows_once, build_tables);
#ifdef HAVE_X86_SIMD
  if ((cpu & BP__CPU_BMI2) && (cpu & BP__CPU_SSSE3)) return blocks_bmi2;
  if (cpu & BP__CPU_SSSE3) return cpu & BP__CPU_POPCNT ? blocks_ssse3 : windows_ssse3;
#endif
  (void)cpu;
  return windows_scalar;
}

static _Atomic(windows_fn) windows_impl;

static emit_fn emit_for(unsigned cpu) {
#ifdef HAVE_X86_SIMD
  if ((cpu & BP__CPU_SSSE3) && (cpu & BP__CPU_POPCNT)) {
    pthread_once(&windows_once, build_tables);
    return emit_bytes_ssse3;
  }
#endif
  (void)cpu;
  return emit_bytes_portable;
}

bool bp__mp_take_int_bytes_each(const uint8_t **pp, const uint8_t *end, uint8_t *out, size_t n) {
  const uint8_t *p = *pp;
  for (size_t i = 0; i < n; i++) {
    if (p < end && *p <= 0x7f) {
      out[i] = *p++;
    } else if (end - p >= 2 && *p == 0xcc) {
      out[i] = p[1];
      p += 2;
    } else {
      return false;
    }
  }
  *pp = p;
  return true;
}

/* bp__mp_take_int_bytes by the given windows. */
static bool take_int_bytes(windows_fn windows_of, const uint8_t **pp, const uint8_t *end, uint8_t *out, size_t n) {
  const uint8_t *p = *pp;
  size_t i = windows_of(&p, end, out, n);
  /* What the windows left: the last elements of a buffer that ends within 8
   * bytes, or the element a window refused (then this fails). */
  if (!bp__mp_take_int_bytes_each(&p, end, out + i, n - i)) return false;
  *pp = p;
  return true;
}

bool bp__mp_take_int_bytes(const uint8_t **pp, const uint8_t *end, uint8_t *out, size_t n) {
  windows_fn windows_of = atomic_load_explicit(&windows_impl, memory_order_acquire);
  if (!windows_of) {
    windows_of = windows_for(bp__cpu_features());
    atomic_store_explicit(&windows_impl, windows_of, memory_order_release);
  }
  return take_int_bytes(windows_of, pp, end, out, n);
}

bool bp__mp_take_int_bytes_using(unsigned cpu, const uint8_t **pp, const uint8_t *end, uint8_t *out, size_t n) {
  return take_int_bytes(windows_for(cpu & bp__cpu_features()), pp, end, out, n);
}

static bp_status read_int_bytes(bp__mp_reader *r, uint8_t *out, size_t n) {
  /* What every writer emits first; any other integer form (cd 00 05 is a
   * valid 5) goes through the general reader from the start. */
  if (bp__mp_take_int_bytes(&r->p, r->end, out, n)) return BP_OK;
  for (size_t i = 0; i < n; i++) {
    bp_status st = bp__mp_read_u8(r, &out[i]);
    if (st) return st;
  }
  return BP_OK;
}

bp_status bp__mp_read_fixed_bytes(bp__mp_reader *r, uint8_t *out, size_t n) {
  /* The usual form: an array header of exactly n elements (fixarray for 16,
   * array16 for 32), then the elements. */
  size_t left = bp__mp_remaining(r);
  if (n < 16 && left >= 1 && r->p[0] == (0x90 | n)) {
    r->p += 1;
    return read_int_bytes(r, out, n);
  }
  if (n >= 16 && n <= 0xffff && left >= 3 && r->p[0] == 0xdc && bp__get_be16(r->p + 1) == n) {
    r->p += 3;
    return read_int_bytes(r, out, n);
  }
  size_t at = bp__mp_offset(r);
  bp__mp_value v;
  bp_status st = bp__mp_next(r, &v);
  if (st) return st;
  if (v.type == BP__MP_BIN) {
    if (v.len != n)
      return bp__fail(BP_ESERIAL, "msgpack: expected %zu bytes at offset %zu, found %u", n, at, v.len);
    memcpy(out, v.ptr, n);
    return BP_OK;
  }
  if (v.type != BP__MP_ARRAY) return wrong_type(r, at, "byte array", &v);
  if (v.len != n)
    return bp__fail(BP_ESERIAL, "msgpack: expected %zu-element array at offset %zu, found %u", n,
                    at, v.len);
  return read_int_bytes(r, out, n);
}

bp_status bp__mp_read_id(bp__mp_reader *r, bp_id *out) {
  uint8_t raw[16];
  bp_status st = bp__mp_read_fixed_bytes(r, raw, 16);
  if (!st) *out = bp_id_from_bytes(raw);
  return st;
}

bp_status bp__mp_read_bytes(bp__mp_reader *r, bp__buf *scratch, const uint8_t **ptr, size_t *len) {
  size_t at = bp__mp_offset(r);
  bp__mp_value v;
  bp_status st = bp__mp_next(r, &v);
  if (st) return st;
  if (v.type == BP__MP_BIN) {
    *ptr = v.ptr;
    *len = v.len;
    return BP_OK;
  }
  if (v.type != BP__MP_ARRAY) return wrong_type(r, at, "byte array", &v);
  if (v.len > bp__mp_remaining(r)) return truncated(r, v.len);
  *len = v.len;
  if (!scratch) {
    *ptr = NULL;
    uint8_t sink[256];
    for (size_t done = 0; done < v.len;) {
      size_t n = v.len - done < sizeof sink ? v.len - done : sizeof sink;
      st = read_int_bytes(r, sink, n);
      if (st) return st;
      done += n;
    }
    return BP_OK;
  }
  scratch->len = 0;
  if (!bp__buf_reserve(scratch, v.len ? v.len : 1))
    return bp__fail(BP_ENOMEM, "msgpack: out of memory for %u bytes", v.len);
  st = read_int_bytes(r, scratch->data, v.len);
  if (st) return st;
  scratch->len = v.len;
  *ptr = scratch->data;
  return BP_OK;
}
