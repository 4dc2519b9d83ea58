/*
 * json.c - payload conversion between JSON text and MessagePack, through
 * json-c (the parser and the serializer are json-c's; this file only walks
 * the trees).
 */
#include "wire/msgpack.h"
#include "batpak/wire.h"

#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>

/* ------------------------------------------------------- JSON -> msgpack */

static void line_col(const char *text, size_t offset, size_t *line, size_t *col) {
  *line = 1;
  *col = 1;
  for (size_t i = 0; i < offset; i++) {
    if (text[i] == '\n') { (*line)++; *col = 1; }
    else (*col)++;
  }
}

static bp_status emit_json_value(bp__buf *b, struct json_object *o, int depth);

static bp_status emit_json_value(bp__buf *b, struct json_object *o, int depth) {
  if (depth > BP_JSON_MAX_DEPTH)
    return bp__fail(BP_ELIMIT, "json: nesting deeper than %d", BP_JSON_MAX_DEPTH);
  switch (json_object_get_type(o)) {
    case json_type_null: bp__mp_put_nil(b); break;
    case json_type_boolean: bp__mp_put_bool(b, json_object_get_boolean(o)); break;
    case json_type_int: {
      /* json-c keeps either an int64 or a uint64; get_int64 clamps large
       * unsigned values to INT64_MAX, get_uint64 clamps negatives to 0. */
      int64_t s = json_object_get_int64(o);
      if (s < 0) bp__mp_put_int(b, s);
      else bp__mp_put_uint(b, json_object_get_uint64(o));
      break;
    }
    case json_type_double: {
      /* json-c reads NaN, Infinity and out-of-range exponents; JSON has no such numbers. */
      double d = json_object_get_double(o);
      if (!isfinite(d))
        return bp__fail(BP_EJSON, "json: number %s is not finite", json_object_get_string(o));
      bp__mp_put_f64(b, d);
      break;
    }
    case json_type_string:
      bp__mp_put_str(b, json_object_get_string(o), (size_t)json_object_get_string_len(o));
      break;
    case json_type_array: {
      size_t n = json_object_array_length(o);
      bp__mp_put_array(b, (uint32_t)n);
      for (size_t i = 0; i < n; i++) {
        bp_status st = emit_json_value(b, json_object_array_get_idx(o, i), depth + 1);
        if (st) return st;
      }
      break;
    }
    case json_type_object: {
      bp__mp_put_map(b, (uint32_t)json_object_object_length(o));
      json_object_object_foreach(o, key, val) {
        bp__mp_put_cstr(b, key);
        bp_status st = emit_json_value(b, val, depth + 1);
        if (st) return st;
      }
      break;
    }
  }
  if (b->oom) return bp__fail(BP_ENOMEM, "json: out of memory");
  return BP_OK;
}

/* json-c accepts single-quoted object keys even in strict mode; JSON has no
 * such thing. Returns the offset of the first quote character outside a
 * double-quoted string, or len when there is none. */
static size_t find_single_quote(const char *text, size_t len) {
  bool in_string = false;
  for (size_t i = 0; i < len; i++) {
    char c = text[i];
    if (in_string) {
      if (c == '\\') i++;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '\'') {
      return i;
    }
  }
  return len;
}

static unsigned hex4(const char *p) {
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    v = v * 16 + (unsigned)(c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                            : c >= 'A' && c <= 'F' ? c - 'A' + 10 : 0);
  }
  return v;
}

static bool is_hex4(const char *p, size_t left) {
  if (left < 4) return false;
  for (int i = 0; i < 4; i++)
    if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f') || (p[i] >= 'A' && p[i] <= 'F'))) return false;
  return true;
}

static bp_status text_fail(const char *json, size_t at, const char *what) {
  size_t line, col;
  line_col(json, at, &line, &col);
  return bp__fail(BP_EJSON, "json: %s at line %zu column %zu", what, line, col);
}

/* What json-c would let through as another value, found in the text itself:
 * bytes that are not strict UTF-8 (overlong forms, surrogates, code points
 * above U+10FFFF), raw control characters in strings, \u escapes of a lone
 * surrogate (json-c substitutes U+FFFD), and integers beyond 64 bits
 * (json-c clamps them to the nearest bound). */
static bp_status check_json_text(const char *json, size_t len) {
  size_t bad = bp__utf8_invalid_at((const uint8_t *)json, len);
  if (bad != SIZE_MAX) return text_fail(json, bad, "text that is not UTF-8");
  bool in_string = false;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)json[i];
    if (in_string) {
      if (c == '"') {
        in_string = false;
      } else if (c < 0x20) {
        return text_fail(json, i, "a raw control character in a string");
      } else if (c == '\\' && i + 1 < len) {
        i++;
        if (json[i] != 'u' || !is_hex4(json + i + 1, len - i - 1)) continue;
        unsigned u = hex4(json + i + 1);
        if (u >= 0xDC00 && u <= 0xDFFF) return text_fail(json, i - 1, "a lone low surrogate escape");
        if (u >= 0xD800 && u <= 0xDBFF) {
          const char *n = json + i + 5;
          size_t left = len - i - 5;
          if (left < 6 || n[0] != '\\' || n[1] != 'u' || !is_hex4(n + 2, left - 2) || hex4(n + 2) < 0xDC00 ||
              hex4(n + 2) > 0xDFFF)
            return text_fail(json, i - 1, "a lone high surrogate escape");
          i += 6;
        }
        i += 4;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      size_t end = i, digits = 0;
      bool integer = true;
      while (end < len && strchr("+-0123456789.eE", json[end])) {
        if (json[end] == '.' || json[end] == 'e' || json[end] == 'E') integer = false;
        if (json[end] >= '0' && json[end] <= '9') digits++;
        end++;
      }
      if (integer && digits >= 19) {
        char num[32];
        size_t n = end - i;
        bool fits = n < sizeof num;
        if (fits) {
          memcpy(num, json + i, n);
          num[n] = 0;
          errno = 0;
          char *stop;
          if (num[0] == '-') (void)strtoll(num, &stop, 10);
          else (void)strtoull(num, &stop, 10);
          fits = errno == 0 && *stop == 0;
        }
        if (!fits) return text_fail(json, i, "an integer outside 64 bits");
      }
      i = end - 1;
    }
  }
  return BP_OK;
}

bp_status bp_json_to_msgpack(const char *json, size_t len, uint8_t **out, size_t *out_len) {
  if (out) *out = NULL;
  if (!json || !out || !out_len) return bp__fail(BP_EINVAL, "bp_json_to_msgpack: NULL argument");
  if (len > INT32_MAX) return bp__fail(BP_ELIMIT, "json: text of %zu bytes is too long", len);
  bp_status checked = check_json_text(json, len);
  if (checked) return checked;

  struct json_tokener *tok = json_tokener_new_ex(BP_JSON_MAX_DEPTH);
  if (!tok) return bp__fail(BP_ENOMEM, "json: out of memory");
  json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
  struct json_object *root = json_tokener_parse_ex(tok, json, (int)len);
  enum json_tokener_error jerr = json_tokener_get_error(tok);
  size_t consumed = json_tokener_get_parse_end(tok);
  if (jerr == json_tokener_continue) {
    /* A top-level number may still be growing: a NUL tells json-c the text ended. */
    root = json_tokener_parse_ex(tok, "", 1);
    jerr = json_tokener_get_error(tok);
    if (jerr != json_tokener_success) consumed = len;
  }
  size_t quote = find_single_quote(json, len);
  bp_status st = BP_OK;

  size_t first = 0;
  while (first < len && (json[first] == ' ' || json[first] == '\t' || json[first] == '\n' ||
                         json[first] == '\r'))
    first++;

  if (jerr == json_tokener_success && quote < len) {
    size_t line, col;
    line_col(json, quote, &line, &col);
    st = bp__fail(BP_EJSON, "json: single-quoted string at line %zu column %zu", line, col);
  } else if (jerr == json_tokener_continue || first == len) {
    st = bp__fail(BP_EJSON, "json: unexpected end of input");
  } else if (jerr != json_tokener_success) {
    size_t line, col;
    line_col(json, consumed < len ? consumed : len, &line, &col);
    st = bp__fail(jerr == json_tokener_error_depth ? BP_ELIMIT : BP_EJSON,
                  "json: %s at line %zu column %zu", json_tokener_error_desc(jerr), line, col);
  } else {
    while (consumed < len && (json[consumed] == ' ' || json[consumed] == '\t' ||
                              json[consumed] == '\n' || json[consumed] == '\r'))
      consumed++;
    if (consumed < len) {
      size_t line, col;
      line_col(json, consumed, &line, &col);
      st = bp__fail(BP_EJSON, "json: unexpected text after the value at line %zu column %zu", line,
                    col);
    }
  }

  if (!st) {
    bp__buf b;
    bp__buf_init(&b);
    st = emit_json_value(&b, root, 0);
    if (st) {
      bp__buf_free(&b);
    } else {
      *out = b.data;
      *out_len = b.len;
    }
  }
  json_object_put(root);
  json_tokener_free(tok);
  return st;
}

/* ------------------------------------------------------- msgpack -> JSON */

/* The shortest "%.*g" rendering that reads back as the same double. */
static void shortest_double(double d, char *buf, size_t size) {
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(buf, size, "%.*g", prec, d);
    if (strtod(buf, NULL) == d) break;
  }
  /* Keep it a JSON number that still reads as floating point. */
  if (!strpbrk(buf, ".eEn")) strncat(buf, ".0", size - strlen(buf) - 1);
}

static bp_status to_json(bp__mp_reader *r, int depth, struct json_object **out);

#define MAX_KEY_TEXT 4096

/* JSON text is Unicode: a MessagePack str whose bytes are not UTF-8 has no
 * JSON form. It is refused rather than passed through (invalid JSON) or
 * patched with U+FFFD (another value). */
static bp_status check_str(const uint8_t *p, uint32_t n, const bp__mp_reader *r) {
  size_t bad = bp__utf8_invalid_at(p, n);
  if (bad == SIZE_MAX) return BP_OK;
  return bp__fail(BP_ESERIAL, "msgpack: a str before offset %zu is not UTF-8 (byte 0x%02X at %zu of it); JSON cannot "
                  "hold it", bp__mp_offset(r), p[bad], bad);
}

static struct json_object *bytes_array(const uint8_t *p, uint32_t n) {
  struct json_object *a = json_object_new_array_ext((int)n);
  if (!a) return NULL;
  for (uint32_t i = 0; i < n; i++) json_object_array_add(a, json_object_new_int(p[i]));
  return a;
}

static bp_status to_json(bp__mp_reader *r, int depth, struct json_object **out) {
  if (depth > BP_JSON_MAX_DEPTH)
    return bp__fail(BP_ELIMIT, "msgpack: nesting deeper than %d", BP_JSON_MAX_DEPTH);
  bp__mp_value v;
  bp_status st = bp__mp_next(r, &v);
  if (st) return st;
  struct json_object *o = NULL;
  switch (v.type) {
    case BP__MP_NIL: *out = NULL; return BP_OK;
    case BP__MP_BOOL: o = json_object_new_boolean(v.b); break;
    case BP__MP_UINT: o = json_object_new_uint64(v.u); break;
    case BP__MP_INT: o = json_object_new_int64(v.i); break;
    case BP__MP_FLOAT:
      if (!isfinite(v.f)) { *out = NULL; return BP_OK; }
      {
        char buf[40];
        shortest_double(v.f, buf, sizeof buf);
        o = json_object_new_double_s(v.f, buf);
      }
      break;
    case BP__MP_STR:
      if ((st = check_str(v.ptr, v.len, r))) return st;
      o = json_object_new_string_len((const char *)v.ptr, (int)v.len);
      break;
    case BP__MP_BIN: o = bytes_array(v.ptr, v.len); break;
    case BP__MP_EXT:
      o = json_object_new_object();
      if (o) {
        json_object_object_add(o, "ext_type", json_object_new_int(v.ext_type));
        json_object_object_add(o, "data", bytes_array(v.ptr, v.len));
      }
      break;
    case BP__MP_ARRAY:
      if (v.len > bp__mp_remaining(r))
        return bp__fail(BP_ESERIAL, "msgpack: array of %u items at offset %zu is longer than its input",
                        v.len, bp__mp_offset(r));
      /* Grow as items arrive: a claimed length is not trusted for allocation. */
      o = json_object_new_array_ext(v.len < 16 ? (int)v.len : 16);
      for (uint32_t i = 0; o && i < v.len; i++) {
        struct json_object *item;
        if ((st = to_json(r, depth + 1, &item))) { json_object_put(o); return st; }
        json_object_array_add(o, item);
      }
      break;
    case BP__MP_MAP:
      if (v.len > bp__mp_remaining(r) / 2)
        return bp__fail(BP_ESERIAL, "msgpack: map of %u pairs at offset %zu is longer than its input",
                        v.len, bp__mp_offset(r));
      o = json_object_new_object();
      for (uint32_t i = 0; o && i < v.len; i++) {
        struct json_object *key, *val;
        char *keytext;
        if (r->p < r->end && ((*r->p & 0xe0) == 0xa0 || (*r->p >= 0xd9 && *r->p <= 0xdb))) {
          const char *s;
          uint32_t n;
          if ((st = bp__mp_read_str(r, &s, &n)) || (st = check_str((const uint8_t *)s, n, r))) {
            json_object_put(o);
            return st;
          }
          keytext = malloc((size_t)n + 1);
          if (keytext) { memcpy(keytext, s, n); keytext[n] = '\0'; }
        } else {
          /* A non-string key is rendered as the JSON text of the key. */
          if ((st = to_json(r, depth + 1, &key))) { json_object_put(o); return st; }
          const char *t = json_object_to_json_string_ext(key, JSON_C_TO_STRING_PLAIN);
          /* Keys nested in keys are escaped again at every level: bound them,
           * or a small input could grow without limit. */
          if (t && strlen(t) > MAX_KEY_TEXT) {
            json_object_put(key);
            json_object_put(o);
            return bp__fail(BP_ELIMIT, "msgpack: a non-string map key renders to more than %d bytes of JSON",
                            MAX_KEY_TEXT);
          }
          keytext = strdup(t ? t : "null");
          json_object_put(key);
        }
        if (!keytext) { json_object_put(o); return bp__fail(BP_ENOMEM, "out of memory"); }
        if ((st = to_json(r, depth + 1, &val))) { free(keytext); json_object_put(o); return st; }
        json_object_object_add(o, keytext, val);
        free(keytext);
      }
      break;
  }
  if (!o) return bp__fail(BP_ENOMEM, "msgpack: out of memory building JSON");
  *out = o;
  return BP_OK;
}

bp_status bp_msgpack_to_json(const void *msgpack, size_t len, char **out) {
  if (out) *out = NULL;
  if (!msgpack || !out) return bp__fail(BP_EINVAL, "bp_msgpack_to_json: NULL argument");
  bp__mp_reader r;
  bp__mp_reader_init(&r, msgpack, len);
  struct json_object *root = NULL;
  bp_status st = to_json(&r, 0, &root);
  if (!st && bp__mp_remaining(&r) != 0)
    st = bp__fail(BP_ESERIAL, "msgpack: %zu trailing bytes after the document at offset %zu",
                  bp__mp_remaining(&r), bp__mp_offset(&r));
  if (!st) {
    const char *text = root ? json_object_to_json_string_ext(
                                  root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)
                            : "null";
    *out = strdup(text ? text : "null");
    if (!*out) st = bp__fail(BP_ENOMEM, "out of memory");
  }
  json_object_put(root);
  return st;
}
