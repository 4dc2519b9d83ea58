/* jsonline.c - the export/import line format (jsonline.h). */
#define _POSIX_C_SOURCE 200809L
#include "jsonline.h"

#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static bool field(struct json_object *o, const char *k, json_type t, struct json_object **v, char *why, size_t n) {
  if (json_object_object_get_ex(o, k, v) && json_object_is_type(*v, t)) return true;
  snprintf(why, n, "field \"%s\" is missing or not a %s", k, json_type_to_name(t));
  return false;
}

/* The members of the line's top-level object as written: json-c keeps only
 * the last of two equal keys and clamps integers past 64 bits to the nearest
 * bound, both silently, so the line's own text is read for those two checks.
 * The line has already parsed as JSON, so the walk can be simple. */
enum { MAX_MEMBERS = 32 };
typedef struct raw_member {
  char *key;              /* decoded, malloc'd */
  const char *val;        /* the value's text */
  size_t val_len;
} raw_member;

static size_t skip_ws(const char *p, size_t i, size_t len) {
  while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n')) i++;
  return i;
}

/* Index just past the string starting at p[i] (a quote). */
static size_t skip_string(const char *p, size_t i, size_t len) {
  for (i++; i < len && p[i] != '"'; i++)
    if (p[i] == '\\') i++;
  return i + 1;
}

static size_t skip_value(const char *p, size_t i, size_t len) {
  if (p[i] == '"') return skip_string(p, i, len);
  if (p[i] == '{' || p[i] == '[') {
    int depth = 0;
    while (i < len) {
      if (p[i] == '"') {
        i = skip_string(p, i, len);
        continue;
      }
      if (p[i] == '{' || p[i] == '[') depth++;
      if (p[i] == '}' || p[i] == ']') depth--;
      i++;
      if (depth == 0) break;
    }
    return i;
  }
  while (i < len && p[i] != ',' && p[i] != '}' && p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\n') i++;
  return i;
}

static void free_members(raw_member *m, int n) {
  for (int i = 0; i < n; i++) free(m[i].key);
}

/* Returns the number of members, or -1 (too many, out of memory). */
static int raw_members(const char *p, size_t len, raw_member *out) {
  size_t i = skip_ws(p, 0, len);
  if (i >= len || p[i] != '{') return -1;
  int n = 0;
  for (i = skip_ws(p, i + 1, len); i < len && p[i] == '"';) {
    size_t end = skip_string(p, i, len);
    if (n == MAX_MEMBERS) break;
    char *quoted = strndup(p + i, end - i);
    struct json_object *k = quoted ? json_tokener_parse(quoted) : NULL;
    free(quoted);
    out[n].key = k ? strdup(json_object_get_string(k)) : NULL;
    json_object_put(k);
    if (!out[n].key) break;
    i = skip_ws(p, end, len);
    i = skip_ws(p, i + 1, len); /* the colon */
    out[n].val = p + i;
    size_t vend = skip_value(p, i, len);
    out[n].val_len = vend - i;
    n++;
    i = skip_ws(p, vend, len);
    if (i < len && p[i] == ',') i = skip_ws(p, i + 1, len);
    else return n;
  }
  free_members(out, n);
  return -1;
}

static const raw_member *member(const raw_member *m, int n, const char *k) {
  for (int i = n - 1; i >= 0; i--)
    if (strcmp(m[i].key, k) == 0) return &m[i];
  return NULL;
}

static bool id_field(struct json_object *o, const char *k, bool nullable, bp_id *out, char *why, size_t n) {
  struct json_object *v;
  *out = (bp_id){0, 0};
  if (nullable && json_object_object_get_ex(o, k, &v) && json_object_is_type(v, json_type_null)) return true;
  if (!field(o, k, json_type_string, &v, why, n)) return false;
  const char *s = json_object_get_string(v);
  if (strlen(s) != 32 || bp_id_from_hex(s, out) != BP_OK) {
    snprintf(why, n, "field \"%s\" is not 32 hex digits", k);
    return false;
  }
  return true;
}

/* The value is read from the line's text (json-c would clamp it). */
static bool int_field(struct json_object *o, const raw_member *m, int nm, const char *k, int64_t lo, int64_t hi,
                      int64_t *out, char *why, size_t n) {
  struct json_object *v;
  if (!field(o, k, json_type_int, &v, why, n)) return false;
  const raw_member *r = member(m, nm, k);
  char text[32];
  bool fits = r && r->val_len < sizeof text;
  if (fits) {
    memcpy(text, r->val, r->val_len);
    text[r->val_len] = 0;
    errno = 0;
    char *end;
    long long x = strtoll(text, &end, 10);
    fits = errno == 0 && *end == 0;
    *out = x;
  }
  if (!fits || *out < lo || *out > hi) {
    snprintf(why, n, "field \"%s\" is out of range (%" PRId64 " to %" PRId64 ")", k, lo, hi);
    return false;
  }
  return true;
}

static bool str_field(struct json_object *o, const char *k, char **out, char *why, size_t n) {
  struct json_object *v;
  if (!field(o, k, json_type_string, &v, why, n)) return false;
  const char *str = json_object_get_string(v);
  if (strlen(str) != (size_t)json_object_get_string_len(v)) {
    /* A C string would end at the NUL: the store would get another name. */
    snprintf(why, n, "field \"%s\" holds a NUL character", k);
    return false;
  }
  *out = strdup(str);
  if (!*out) snprintf(why, n, "out of memory");
  return *out != NULL;
}

bool jl_parse(const char *line, size_t len, jl_event *ev, char *why, size_t n) {
  memset(ev, 0, sizeof *ev);
  struct json_tokener *tok = json_tokener_new();
  if (!tok) {
    snprintf(why, n, "out of memory");
    return false;
  }
  struct json_object *o = json_tokener_parse_ex(tok, line, (int)(len > 0x7fffffff ? 0x7fffffff : len));
  enum json_tokener_error err = json_tokener_get_error(tok);
  size_t used = (size_t)json_tokener_get_parse_end(tok);
  json_tokener_free(tok);
  bool ok = o && err == json_tokener_success;
  if (!ok) snprintf(why, n, "not a JSON object");
  for (size_t i = used; ok && i < len; i++)
    if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r' && line[i] != '\n') {
      snprintf(why, n, "text after the JSON object");
      ok = false;
    }
  if (ok && !json_object_is_type(o, json_type_object)) {
    snprintf(why, n, "not a JSON object");
    ok = false;
  }
  raw_member m[MAX_MEMBERS];
  int nm = ok ? raw_members(line, len, m) : 0;
  if (ok && nm < 0) {
    snprintf(why, n, "more than %d fields, or out of memory", MAX_MEMBERS);
    ok = false;
    nm = 0;
  }
  for (int i = 0; ok && i < nm; i++)
    for (int j = 0; ok && j < i; j++)
      if (strcmp(m[i].key, m[j].key) == 0) {
        snprintf(why, n, "field \"%.60s\" appears twice", m[i].key);
        ok = false;
      }
  int64_t kind = 0, flags = 0;
  struct json_object *hex = NULL;
  ok = ok && id_field(o, "event_id", false, &ev->event_id, why, n) &&
       id_field(o, "correlation_id", false, &ev->correlation_id, why, n) &&
       id_field(o, "causation_id", true, &ev->causation_id, why, n) && str_field(o, "entity", &ev->entity, why, n) &&
       str_field(o, "scope", &ev->scope, why, n) && int_field(o, m, nm, "kind", 0, 0xFFFF, &kind, why, n) &&
       int_field(o, m, nm, "flags", 0, 0xFF, &flags, why, n) &&
       int_field(o, m, nm, "timestamp_us", INT64_MIN, INT64_MAX, &ev->timestamp_us, why, n) &&
       field(o, "payload_msgpack_hex", json_type_string, &hex, why, n);
  free_members(m, nm);
  if (ok) {
    ev->kind = (bp_kind)kind;
    ev->flags = (uint8_t)flags;
    const char *h = json_object_get_string(hex);
    size_t hl = (size_t)json_object_get_string_len(hex);
    ev->payload = malloc(hl / 2 + 1);
    if (hl % 2 || !ev->payload) {
      snprintf(why, n, ev->payload ? "payload hex has an odd number of digits" : "out of memory");
      ok = false;
    }
    for (size_t i = 0; ok && i < hl; i += 2) {
      int a = hexval(h[i]), b = hexval(h[i + 1]);
      if (a < 0 || b < 0) {
        snprintf(why, n, "payload hex has a non-hex character at %zu", i);
        ok = false;
      } else {
        ev->payload[i / 2] = (uint8_t)(a << 4 | b);
      }
    }
    ev->payload_len = hl / 2;
  }
  json_object_put(o);
  if (!ok) jl_free(ev);
  return ok;
}

void jl_hex(const uint8_t *p, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[p[i] >> 4];
    out[2 * i + 1] = digits[p[i] & 15];
  }
  out[2 * n] = 0;
}

char *jl_format(const jl_event *ev) {
  char id[33], corr[33], caus[33];
  bp_id_to_hex(ev->event_id, id);
  bp_id_to_hex(ev->correlation_id, corr);
  bp_id_to_hex(ev->causation_id, caus);
  char *hex = malloc(ev->payload_len * 2 + 1);
  if (!hex) return NULL;
  jl_hex(ev->payload, ev->payload_len, hex);
  struct json_object *o = json_object_new_object();
  json_object_object_add(o, "event_id", json_object_new_string(id));
  json_object_object_add(o, "entity", json_object_new_string(ev->entity));
  json_object_object_add(o, "scope", json_object_new_string(ev->scope));
  json_object_object_add(o, "kind", json_object_new_int(ev->kind));
  json_object_object_add(o, "flags", json_object_new_int(ev->flags));
  json_object_object_add(o, "timestamp_us", json_object_new_int64(ev->timestamp_us));
  json_object_object_add(o, "correlation_id", json_object_new_string(corr));
  json_object_object_add(o, "causation_id", bp_id_is_nil(ev->causation_id) ? NULL : json_object_new_string(caus));
  json_object_object_add(o, "payload_msgpack_hex", json_object_new_string(hex));
  char *line = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
  json_object_put(o);
  free(hex);
  return line;
}

void jl_free(jl_event *ev) {
  free(ev->entity);
  free(ev->scope);
  free(ev->payload);
  memset(ev, 0, sizeof *ev);
}
