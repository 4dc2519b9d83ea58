/*
 * records.h - encoders and decoders for the records batpak 0.2.0 writes:
 * segment headers, frames, coordinates and the policy records.
 *
 * Encoders produce the bytes the Rust crate produces (maps with the field
 * names as keys, in declaration order; see msgpack.h for the integer and
 * length forms). Decoders accept any valid MessagePack of the right shape:
 * fields in any order, unknown fields skipped, any integer width, byte arrays
 * as bin or as arrays of integers. Anything else is BP_ESERIAL.
 *
 * Frame layout on disk (integers big-endian):
 *
 *   +-----------+-----------+---------------------------------+
 *   | len (u32) | crc (u32) | body: len bytes of MessagePack  |
 *   +-----------+-----------+---------------------------------+
 *   crc = IEEE CRC-32 of the body
 *
 *   body = { "event":  { "header": {event_id, correlation_id, causation_id,
 *                                   timestamp_us, position{wall_ms, counter,
 *                                   depth, lane, sequence}, payload_size,
 *                                   event_kind, flags, content_hash},
 *                        "payload": [byte, ...],
 *                        "hash_chain": nil | {prev_hash, event_hash} },
 *            "entity": str, "scope": str }
 */
#ifndef BATPAK_WIRE_RECORDS_H
#define BATPAK_WIRE_RECORDS_H

#include "wire/msgpack.h"

#define BP__FRAME_PREFIX 8u        /* len + crc */
#define BP__SEGMENT_MAGIC "FBAT"
#define BP__SEGMENT_VERSION 1u

/* A frame's contents. Strings and payload are (pointer, length) views: into
 * the decoded input, or into the decoder's scratch buffer for a payload that
 * was written as an integer array. Strings are not NUL-terminated. */
typedef struct bp__frame {
  bp_header header;
  const char *entity;
  size_t entity_len;
  const char *scope;
  size_t scope_len;
  const uint8_t *payload;
  size_t payload_len;
  bool has_chain;
  bp_hash_chain chain;
} bp__frame;

/* Appends the frame body (MessagePack only). */
void bp__frame_encode_body(bp__buf *b, const bp__frame *f);
/* Appends a whole frame: len, crc and body. Errors: BP_ENOMEM, BP_ELIMIT (a
 * body over 4 GiB). On error b->len is as it was. */
bp_status bp__frame_encode(bp__buf *b, const bp__frame *f);
/* A frame body prepared before the writer knows the event's place: every
 * run of bytes that does not depend on the commit (ids, content hash and
 * payload, event hash, coordinate), back to back, around the two that do
 * (the scalars from timestamp to flags, and prev_hash). The writer encodes
 * the parts on the appending thread and joins them under its lock. For
 * frames with a hash chain only. */
typedef struct bp__frame_parts {
  uint8_t *data;            /* inline_data, or allocated for large frames */
  size_t head, mid, tail;   /* the runs' lengths */
  size_t payload_len;
  uint8_t inline_data[512];
} bp__frame_parts;
/* Encodes the parts of f (header ids, content hash, payload, chain's
 * event_hash, coordinate). Errors: BP_ENOMEM. */
bp_status bp__frame_parts_encode(bp__frame_parts *p, const bp__frame *f);
void bp__frame_parts_free(bp__frame_parts *p);
/* Appends the whole frame (len, crc and body) from the parts and the rest of
 * its header: byte for byte what bp__frame_encode writes for the same frame.
 * Errors: as bp__frame_encode. */
bp_status bp__frame_encode_parts(bp__buf *b, const bp__frame_parts *p, const bp_header *h, const uint8_t prev_hash[32]);
/* Decodes a frame body of exactly len bytes. scratch receives the payload
 * when it is written as an integer array; with scratch NULL the payload is
 * validated and skipped (f->payload NULL, f->payload_len set).
 * Errors: BP_ESERIAL (also when payload_size disagrees with the payload). */
bp_status bp__frame_decode_body(const uint8_t *body, size_t len, bp__buf *scratch, bp__frame *f);
/* A whole frame of len bytes from outside the log (replication): its length
 * prefix says len - 8, its CRC holds, its body decodes (into scratch as
 * bp__frame_decode_body), and its content hash, and its chain's event hash
 * when it has a chain, are the BLAKE3 of its payload. Errors: BP_EINVAL (too
 * short, or a prefix that disagrees with len), BP_ECRC, BP_ESERIAL. */
bp_status bp__frame_check_whole(const uint8_t *frame, size_t len, bp__buf *scratch, bp__frame *f);
/* The same without the fast path for the canonical layout: every valid
 * encoding, field by field. The fuzz target checks that both agree. */
bp_status bp__frame_decode_general(const uint8_t *body, size_t len, bp__buf *scratch, bp__frame *f);
/* Only the canonical layout (keys in the writers' order, byte arrays as
 * integer arrays, ids as bin8), read in one pass: true and *f filled, or false
 * (nothing recorded) for anything else, which the general decoder then reads. */
bool bp__frame_decode_canonical(const uint8_t *body, size_t len, bp__buf *scratch, bp__frame *f);
/* Field-by-field equality of two decoded frames (payload bytes, not pointers). */
bool bp__frame_equal(const bp__frame *a, const bp__frame *b);

/* The IEEE CRC-32 used by frames, SIDX-less scans and checkpoints. */
uint32_t bp__crc32(const void *data, size_t len);
/* Continues a CRC: bp__crc32_update(bp__crc32(a), b) is the CRC of a then b. */
uint32_t bp__crc32_update(uint32_t crc, const void *data, size_t len);
/* bp__crc32_update by the code for the given BP__CPU_* features (those the
 * processor lacks are ignored): for tests of every path. */
uint32_t bp__crc32_update_using(unsigned cpu, uint32_t crc, const void *data, size_t len);

/* Segment header record. */
typedef struct bp__segment_header {
  uint32_t version;
  uint32_t flags;
  int64_t created_ns;
  uint64_t segment_id;
} bp__segment_header;

/* Appends "FBAT", header_len (u32 BE) and the header map. */
void bp__segment_header_encode(bp__buf *b, const bp__segment_header *h);
/* Parses the start of a segment file. *consumed is the offset of the first
 * frame. Errors: BP_ECORRUPT (bad magic, unsupported version), BP_ESERIAL. */
bp_status bp__segment_header_decode(const uint8_t *data, size_t len, bp__segment_header *h,
                                    size_t *consumed);
/* Whether a segment file of size bytes, of which head holds the first have,
 * was cut short while its header was written: what it holds of the magic is
 * right, and it is too short for the magic and header_len (8 bytes) or for
 * the header that header_len announces. Such a file holds no events. A sealed
 * file (one that ends in a footer) is never torn: callers check that first. */
bool bp__segment_header_torn(const uint8_t *head, size_t have, size_t size);

/* Coordinate {entity, scope}. */
void bp__coord_encode(bp__buf *b, const char *entity, size_t elen, const char *scope, size_t slen);
bp_status bp__coord_decode(const uint8_t *data, size_t len, const char **entity, size_t *elen,
                           const char **scope, size_t *slen);

/* Committed<T> {payload: T, event_id, sequence, hash}: payload is one
 * MessagePack value, already encoded, spliced in as it is. */
typedef struct bp__committed {
  const uint8_t *payload;      /* one MessagePack value */
  size_t payload_len;
  bp_id event_id;
  uint64_t sequence;
  uint8_t hash[32];
} bp__committed;
void bp__committed_encode(bp__buf *b, const bp__committed *c);
bp_status bp__committed_decode(const uint8_t *data, size_t len, bp__committed *c);

/* WaitCondition: Timeout{resume_at_ms} | Event{event_id} | All([...]) |
 * Any([...]) | Custom{tag, data}. A tree; decoded trees are freed with
 * bp__wait_free. */
typedef enum bp__wait_kind {
  BP__WAIT_TIMEOUT, BP__WAIT_EVENT, BP__WAIT_ALL, BP__WAIT_ANY, BP__WAIT_CUSTOM
} bp__wait_kind;
typedef struct bp__wait {
  bp__wait_kind kind;
  uint64_t resume_at_ms;       /* TIMEOUT */
  bp_id event_id;              /* EVENT */
  struct bp__wait *children;   /* ALL, ANY */
  size_t n_children;
  uint16_t tag;                /* CUSTOM */
  uint8_t *data;
  size_t data_len;
} bp__wait;
void bp__wait_encode(bp__buf *b, const bp__wait *w);
bp_status bp__wait_decode(const uint8_t *data, size_t len, bp__wait *w);
void bp__wait_free(bp__wait *w);   /* frees what a decode allocated inside w */

/* CompensationAction: Rollback{event_ids} | Notify{target_id, message} |
 * Release{resource_ids} | Custom{action_type, data}. */
typedef enum bp__comp_kind {
  BP__COMP_ROLLBACK, BP__COMP_NOTIFY, BP__COMP_RELEASE, BP__COMP_CUSTOM
} bp__comp_kind;
typedef struct bp__compensation {
  bp__comp_kind kind;
  bp_id *ids;                  /* ROLLBACK event_ids, RELEASE resource_ids */
  size_t n_ids;
  bp_id target_id;             /* NOTIFY */
  char *text;                  /* NOTIFY message, CUSTOM action_type (NUL-terminated) */
  uint8_t *data;               /* CUSTOM */
  size_t data_len;
} bp__compensation;
void bp__compensation_encode(bp__buf *b, const bp__compensation *c);
bp_status bp__compensation_decode(const uint8_t *data, size_t len, bp__compensation *c);
void bp__compensation_free(bp__compensation *c);

#endif /* BATPAK_WIRE_RECORDS_H */
