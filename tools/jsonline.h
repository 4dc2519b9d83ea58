/*
 * jsonline.h - one event as a line of JSON: what `batpak export` writes and
 * `batpak import` reads.
 *
 *   {"event_id":"<32 hex>","entity":"...","scope":"...","kind":4097,"flags":0,
 *    "timestamp_us":1767225600000000,"correlation_id":"<32 hex>",
 *    "causation_id":null | "<32 hex>","payload_msgpack_hex":"<even hex>"}
 *
 * Reading is strict: every field present with its type, integers in range,
 * ids of exactly 32 hex digits, payload hex of lowercase or uppercase digits
 * in pairs. Unknown fields are ignored.
 */
#ifndef BATPAK_TOOLS_JSONLINE_H
#define BATPAK_TOOLS_JSONLINE_H

#include <batpak.h>

typedef struct jl_event {
  bp_id event_id, correlation_id, causation_id;  /* causation nil: none */
  char *entity, *scope;                          /* owned */
  bp_kind kind;
  uint8_t flags;
  int64_t timestamp_us;
  uint8_t *payload;                              /* owned */
  size_t payload_len;
} jl_event;

/* Parses one line (no trailing newline needed). On failure returns false and
 * writes the reason into why. */
bool jl_parse(const char *line, size_t len, jl_event *out, char *why, size_t why_size);
/* The line for an event, without a newline; malloc'd, NULL when out of memory. */
char *jl_format(const jl_event *ev);
void jl_free(jl_event *ev);
/* Writes n bytes as 2n lowercase hex digits and a NUL into out. */
void jl_hex(const uint8_t *p, size_t n, char *out);

#endif
