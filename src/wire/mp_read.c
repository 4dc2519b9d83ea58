/*
 * mp_read.c - the public MessagePack reader (batpak/wire.h) over the
 * library's own (msgpack.c): the same bounds checks and error messages, with
 * a state the caller owns and a failed read leaving it where it was.
 */
#include "batpak/wire.h"
#include "wire/msgpack.h"

#include <string.h>

static bp__mp_reader inner(const bp_mp_reader *r) { return (bp__mp_reader){r->start, r->pos, r->end}; }

/* Runs a read on a copy of the reader and moves the caller's only on success. */
#define MP_READ(r, call)               \
  do {                                 \
    bp__mp_reader in_ = inner(r);      \
    bp_status st_ = (call);            \
    if (st_ == BP_OK) (r)->pos = in_.p; \
    return st_;                        \
  } while (0)

void bp_mp_reader_init(bp_mp_reader *r, const void *data, size_t len) {
  memset(r, 0, sizeof *r);
  r->start = r->pos = data;
  r->end = r->start + (data ? len : 0);
}

bool bp_mp_at_end(const bp_mp_reader *r) { return r->pos >= r->end; }

static void value_out(const bp__mp_value *v, bp_mp_value *out) {
  memset(out, 0, sizeof *out);
  out->type = (bp_mp_type)v->type;
  out->boolean = v->b;
  out->u = v->u;
  out->i = v->i;
  out->f = v->f;
  out->ptr = v->ptr;
  out->len = v->len;
  out->ext_type = v->ext_type;
}

bp_status bp_mp_next(bp_mp_reader *r, bp_mp_value *out) {
  bp__mp_reader in = inner(r);
  bp__mp_value v;
  memset(&v, 0, sizeof v); /* the decoder sets only the fields of the token's type */
  bp_status st = bp__mp_next(&in, &v);
  if (st) return st;
  value_out(&v, out);
  r->pos = in.p;
  return BP_OK;
}

bp_status bp_mp_skip(bp_mp_reader *r) { MP_READ(r, bp__mp_skip(&in_)); }

/* The next token, which must be of type want (else BP_ESERIAL, reader unmoved). */
static bp_status next_of(bp_mp_reader *r, bp__mp_value *v, bp__mp_type want, const char *what) {
  bp__mp_reader in = inner(r);
  bp_status st = bp__mp_next(&in, v);
  if (st) return st;
  if (v->type != want)
    return bp__fail(BP_ESERIAL, "msgpack: %s expected at offset %zu", what, (size_t)(r->pos - r->start));
  r->pos = in.p;
  return BP_OK;
}

bp_status bp_mp_read_nil(bp_mp_reader *r) {
  bp__mp_value v;
  return next_of(r, &v, BP__MP_NIL, "nil");
}

/* Reads the next token and converts it into *out with conv; a token conv
 * refuses fails BP_ESERIAL naming what was expected, and the reader stays. */
static bp_status read_as(bp_mp_reader *r, bool (*conv)(const bp__mp_value *, void *), void *out, const char *what) {
  bp__mp_reader in = inner(r);
  bp__mp_value v;
  memset(&v, 0, sizeof v);
  bp_status st = bp__mp_next(&in, &v);
  if (st) return st;
  if (!conv(&v, out))
    return bp__fail(BP_ESERIAL, "msgpack: %s expected at offset %zu", what, (size_t)(r->pos - r->start));
  r->pos = in.p;
  return BP_OK;
}

static bool as_bool(const bp__mp_value *v, void *out) {
  if (v->type != BP__MP_BOOL) return false;
  *(bool *)out = v->b;
  return true;
}

static bool as_int(const bp__mp_value *v, void *out) {
  if (v->type == BP__MP_INT) *(int64_t *)out = v->i;
  else if (v->type == BP__MP_UINT && v->u <= (uint64_t)INT64_MAX) *(int64_t *)out = (int64_t)v->u;
  else return false;
  return true;
}

static bool as_uint(const bp__mp_value *v, void *out) {
  if (v->type != BP__MP_UINT) return false;
  *(uint64_t *)out = v->u;
  return true;
}

static bool as_double(const bp__mp_value *v, void *out) {
  if (v->type == BP__MP_FLOAT) *(double *)out = v->f;
  else if (v->type == BP__MP_UINT) *(double *)out = (double)v->u;
  else if (v->type == BP__MP_INT) *(double *)out = (double)v->i;
  else return false;
  return true;
}

bp_status bp_mp_read_bool(bp_mp_reader *r, bool *out) { return read_as(r, as_bool, out, "a boolean"); }
bp_status bp_mp_read_int(bp_mp_reader *r, int64_t *out) {
  return read_as(r, as_int, out, "an integer of int64 range");
}
bp_status bp_mp_read_uint(bp_mp_reader *r, uint64_t *out) {
  return read_as(r, as_uint, out, "a non-negative integer");
}
bp_status bp_mp_read_double(bp_mp_reader *r, double *out) { return read_as(r, as_double, out, "a number"); }

bp_status bp_mp_read_str(bp_mp_reader *r, const char **s, size_t *len) {
  bp__mp_value v;
  bp_status st = next_of(r, &v, BP__MP_STR, "a string");
  if (!st) *s = (const char *)v.ptr, *len = v.len;
  return st;
}

bp_status bp_mp_read_bin(bp_mp_reader *r, const uint8_t **p, size_t *len) {
  bp__mp_value v;
  bp_status st = next_of(r, &v, BP__MP_BIN, "binary");
  if (!st) *p = v.ptr, *len = v.len;
  return st;
}

bp_status bp_mp_read_array(bp_mp_reader *r, uint32_t *items) {
  bp__mp_value v;
  bp_status st = next_of(r, &v, BP__MP_ARRAY, "an array");
  if (!st) *items = v.len;
  return st;
}

bp_status bp_mp_read_map(bp_mp_reader *r, uint32_t *pairs) {
  bp__mp_value v;
  bp_status st = next_of(r, &v, BP__MP_MAP, "a map");
  if (!st) *pairs = v.len;
  return st;
}

bp_status bp_mp_find_key(bp_mp_reader *r, const char *key) {
  if (!key) return bp__fail(BP_EINVAL, "bp_mp_find_key: key is NULL");
  bp_mp_reader at = *r;
  uint32_t pairs;
  bp_status st = bp_mp_read_map(&at, &pairs);
  if (st) return st;
  size_t klen = strlen(key);
  for (uint32_t i = 0; i < pairs; i++) {
    bp_mp_reader kr = at;
    bp_mp_value k;
    if ((st = bp_mp_next(&kr, &k))) return st;
    if (k.type == BP_MP_STR && k.len == klen && memcmp(k.ptr, key, klen) == 0) {
      r->pos = kr.pos;
      return BP_OK;
    }
    /* Another key (of any type, containers too) and its value. */
    if ((st = bp_mp_skip(&at)) || (st = bp_mp_skip(&at))) return st;
  }
  return bp__fail(BP_ENOTFOUND, "msgpack: no key \"%s\" in the map", key);
}
