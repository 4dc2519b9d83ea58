/*
 * batpak/wire.h - the wire layer's public part: converting payloads between
 * JSON text and MessagePack, and reading MessagePack payloads.
 *
 * Payloads are opaque bytes to the store; by convention they are a MessagePack
 * document. These helpers let programs that think in JSON write and read them.
 * The frame and record codecs of this layer are internal (src/wire/).
 */
#ifndef BATPAK_WIRE_H
#define BATPAK_WIRE_H

#include "batpak/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Nesting deeper than this is rejected by both converters (BP_ELIMIT). */
#define BP_JSON_MAX_DEPTH 512

/* Converts JSON text (len bytes, need not be NUL-terminated) to one MessagePack
 * document. Integers keep their exact 64-bit value (-2^63 .. 2^64-1), other
 * numbers become float64, strings keep their UTF-8 (\u escapes decoded), objects
 * keep their key order. Each integer and length takes its smallest form.
 * Text that would otherwise come out as another value is refused: integers
 * outside -2^63 .. 2^64-1, \u escapes of a lone surrogate, bytes that are not
 * strict UTF-8 (overlong forms, surrogates, above U+10FFFF) and raw control
 * characters in strings.
 * Errors: BP_EJSON (malformed or refused text, with line and column), BP_ELIMIT
 * (nesting deeper than BP_JSON_MAX_DEPTH), BP_ENOMEM, BP_EINVAL (NULL arguments).
 * Ownership: *out is malloc'd; free it with bp_free. On failure *out is NULL. */
BP_API bp_status bp_json_to_msgpack(const char *json, size_t len, uint8_t **out,
                                    size_t *out_len);

/* Converts one MessagePack document to compact JSON text. Maps whose keys are
 * not strings get their keys rendered as JSON text; binary becomes an array of
 * byte values; floats print with enough digits to read back the same value;
 * NaN and infinities become null. The whole input must be exactly one document.
 * A str (value or key) whose bytes are not strict UTF-8 has no JSON form: it is
 * refused, never written through as invalid JSON nor replaced with U+FFFD.
 * Errors: BP_ESERIAL (malformed, trailing bytes or a str that is not UTF-8, with
 * the offset), BP_ELIMIT
 * (nesting deeper than BP_JSON_MAX_DEPTH), BP_ENOMEM.
 * Ownership: *out is a malloc'd NUL-terminated string; free it with bp_free. */
BP_API bp_status bp_msgpack_to_json(const void *msgpack, size_t len, char **out);

/* ------------------------------------------------ reading MessagePack */

/* A reader over one MessagePack payload (an event's bytes), for projections
 * and other code that folds events without converting them to JSON:

 *     bp_mp_reader r;
 *     bp_mp_reader_init(&r, ev->payload, ev->payload_len);
 *     int64_t amount;
 *     if (bp_mp_find_key(&r, "amount") == BP_OK && bp_mp_read_int(&r, &amount) == BP_OK) ...
 *
 * The reader points into the caller's bytes and allocates nothing; strings it
 * returns are not NUL-terminated and live as long as those bytes. Every read
 * checks the input's bounds, and a failed read leaves the reader where it was.
 * Errors of every read: BP_ESERIAL (the next value is of another type, does
 * not fit the destination, or is cut short; the message gives the offset). */
typedef enum bp_mp_type {
  BP_MP_NIL, BP_MP_BOOL, BP_MP_UINT, BP_MP_INT, BP_MP_FLOAT, BP_MP_STR, BP_MP_BIN, BP_MP_ARRAY, BP_MP_MAP,
  BP_MP_EXT
} bp_mp_type;

typedef struct bp_mp_reader {
  const uint8_t *start, *pos, *end;
  void *reserved[2];            /* for later versions; leave alone */
} bp_mp_reader;

/* One token. For an array or a map only its header: len says how many items
 * (pairs, for a map) follow. */
typedef struct bp_mp_value {
  bp_mp_type type;
  bool boolean;                 /* BP_MP_BOOL */
  uint64_t u;                   /* BP_MP_UINT: a non-negative integer, in any form */
  int64_t i;                    /* BP_MP_INT: a negative integer */
  double f;                     /* BP_MP_FLOAT (float 32 widened) */
  const uint8_t *ptr;           /* BP_MP_STR, _BIN, _EXT: the bytes, inside the input */
  uint32_t len;                 /* their length; items of an array; pairs of a map */
  int8_t ext_type;              /* BP_MP_EXT */
  uint64_t reserved[2];
} bp_mp_value;

BP_API void bp_mp_reader_init(bp_mp_reader *r, const void *data, size_t len);
/* Whether every byte was read. */
BP_API bool bp_mp_at_end(const bp_mp_reader *r);
/* The next token; bp_mp_skip skips one whole value, containers included. */
BP_API bp_status bp_mp_next(bp_mp_reader *r, bp_mp_value *out);
BP_API bp_status bp_mp_skip(bp_mp_reader *r);
/* Typed reads. read_int takes any integer from INT64_MIN to INT64_MAX,
 * read_uint any from 0 to UINT64_MAX, read_double a float or an integer. */
BP_API bp_status bp_mp_read_nil(bp_mp_reader *r);
BP_API bp_status bp_mp_read_bool(bp_mp_reader *r, bool *out);
BP_API bp_status bp_mp_read_int(bp_mp_reader *r, int64_t *out);
BP_API bp_status bp_mp_read_uint(bp_mp_reader *r, uint64_t *out);
BP_API bp_status bp_mp_read_double(bp_mp_reader *r, double *out);
BP_API bp_status bp_mp_read_str(bp_mp_reader *r, const char **s, size_t *len);
BP_API bp_status bp_mp_read_bin(bp_mp_reader *r, const uint8_t **p, size_t *len);
BP_API bp_status bp_mp_read_array(bp_mp_reader *r, uint32_t *items);
BP_API bp_status bp_mp_read_map(bp_mp_reader *r, uint32_t *pairs);
/* The reader at a map: moves it to the value of the (string) key, the first
 * such key. Errors: BP_ENOTFOUND (no such key: the reader stays at the map),
 * BP_ESERIAL (not a map, or damaged). */
BP_API bp_status bp_mp_find_key(bp_mp_reader *r, const char *key);

#ifdef __cplusplus
}
#endif

#endif /* BATPAK_WIRE_H */
