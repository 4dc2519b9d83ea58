/*
 * batpak/wire.h - the wire layer's public part: converting payloads between
 * JSON text and MessagePack.
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

#ifdef __cplusplus
}
#endif

#endif /* BATPAK_WIRE_H */
