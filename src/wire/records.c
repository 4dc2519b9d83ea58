/* records.c - segment header, frame, coordinate and policy record codecs. */
#include "wire/records.h"
#include "wire/canon.h"

#include <zlib.h>

/* Reads a map key; every record here has string keys. */
static bp_status read_key(bp__mp_reader *r, const char **k, uint32_t *klen) {
  return bp__mp_read_str(r, k, klen);
}

static bp_status check_end(const bp__mp_reader *r, const char *record) {
  if (bp__mp_remaining(r) != 0)
    return bp__fail(BP_ESERIAL, "%s: %zu trailing bytes after offset %zu", record,
                    bp__mp_remaining(r), bp__mp_offset(r));
  return BP_OK;
}

/* ------------------------------------------------------------------ frame */

static void put_key(bp__buf *b, const char *k) { bp__mp_put_cstr(b, k); }

/* A map key or other fixed bytes, written at o. */
#define EMIT_LIT(o, lit) (memcpy((o), (lit), sizeof(lit) - 1), (o) += sizeof(lit) - 1)

static uint8_t *emit_id(uint8_t *o, bp_id id) {
  EMIT_LIT(o, "\xc4\x10");
  bp_id_to_bytes(id, o);
  return o + 16;
}

/* The most a frame body's fixed part takes (525 bytes: every key, each
 * integer in its widest form, three ids, three hashes at 2 bytes a byte,
 * string and array headers), rounded up. */
#define FRAME_FIXED_MAX 544

/* The body in the writers' order (the layout bp__frame_decode_canonical
 * reads), in runs: the ids (up to the timestamp key), the scalars from the
 * timestamp to the flags, content hash and payload (up to the hash chain),
 * the chain, the coordinate. The writer prepares every run but the scalars
 * and prev_hash before it knows the event's place (bp__frame_parts). */
static uint8_t *emit_ids(uint8_t *o, const bp_header *h) {
  EMIT_LIT(o, "\x83\xa5" "event" "\x83\xa6" "header" "\x89\xa8" "event_id");
  o = emit_id(o, h->event_id);
  EMIT_LIT(o, "\xae" "correlation_id");
  o = emit_id(o, h->correlation_id);
  EMIT_LIT(o, "\xac" "causation_id");
  if (bp_id_is_nil(h->causation_id)) *o++ = 0xc0;
  else o = emit_id(o, h->causation_id);
  EMIT_LIT(o, "\xac" "timestamp_us");
  return o;
}

static uint8_t *emit_scalars(uint8_t *o, const bp_header *h) {
  o = bp__mp_emit_int(o, h->timestamp_us);
  EMIT_LIT(o, "\xa8" "position" "\x85\xa7" "wall_ms");
  o = bp__mp_emit_uint(o, h->position.wall_ms);
  EMIT_LIT(o, "\xa7" "counter");
  o = bp__mp_emit_uint(o, h->position.counter);
  EMIT_LIT(o, "\xa5" "depth");
  o = bp__mp_emit_uint(o, h->position.depth);
  EMIT_LIT(o, "\xa4" "lane");
  o = bp__mp_emit_uint(o, h->position.lane);
  EMIT_LIT(o, "\xa8" "sequence");
  o = bp__mp_emit_uint(o, h->position.sequence);
  EMIT_LIT(o, "\xac" "payload_size");
  o = bp__mp_emit_uint(o, h->payload_size);
  EMIT_LIT(o, "\xaa" "event_kind");
  o = bp__mp_emit_uint(o, h->kind);
  EMIT_LIT(o, "\xa5" "flags");
  return bp__mp_emit_uint(o, h->flags);
}

static uint8_t *emit_content(uint8_t *o, const bp__frame *f) {
  EMIT_LIT(o, "\xac" "content_hash");
  o = bp__mp_emit_byte_array(o, f->header.content_hash, 32);
  EMIT_LIT(o, "\xa7" "payload");
  o = bp__mp_emit_byte_array(o, f->payload, f->payload_len);
  EMIT_LIT(o, "\xaa" "hash_chain");
  return o;
}

/* A chain's opening (up to the prev_hash value) and its rest (event_hash). */
static uint8_t *emit_chain_open(uint8_t *o) {
  EMIT_LIT(o, "\x82\xa9" "prev_hash");
  return o;
}
static uint8_t *emit_chain_rest(uint8_t *o, const bp__frame *f) {
  EMIT_LIT(o, "\xaa" "event_hash");
  return bp__mp_emit_byte_array(o, f->chain.event_hash, 32);
}

static uint8_t *emit_coord(uint8_t *o, const bp__frame *f) {
  EMIT_LIT(o, "\xa6" "entity");
  o = bp__mp_emit_str_header(o, f->entity_len);
  if (f->entity_len) memcpy(o, f->entity, f->entity_len);
  o += f->entity_len;
  EMIT_LIT(o, "\xa5" "scope");
  o = bp__mp_emit_str_header(o, f->scope_len);
  if (f->scope_len) memcpy(o, f->scope, f->scope_len);
  return o + f->scope_len;
}

/* The most a body can take, or 0 when no such frame fits in memory. */
static size_t body_bound(const bp__frame *f) {
  if (f->payload_len > SIZE_MAX / 4 || f->entity_len > SIZE_MAX / 4 || f->scope_len > SIZE_MAX / 4) return 0;
  return FRAME_FIXED_MAX + 2 * f->payload_len + f->entity_len + f->scope_len;
}

void bp__frame_encode_body(bp__buf *b, const bp__frame *f) {
  size_t room = body_bound(f);
  if (room == 0) {
    b->oom = true;
    return;
  }
  if (!bp__buf_reserve(b, room)) return;
  uint8_t *o = b->data + b->len;
  o = emit_ids(o, &f->header);
  o = emit_scalars(o, &f->header);
  o = emit_content(o, f);
  if (f->has_chain) {
    o = emit_chain_open(o);
    o = bp__mp_emit_byte_array(o, f->chain.prev_hash, 32);
    o = emit_chain_rest(o, f);
  } else {
    *o++ = 0xc0;
  }
  o = emit_coord(o, f);
  b->len = (size_t)(o - b->data);
}

/* Writes the length and CRC in front of the body that follows at start. */
static bp_status finish_frame(bp__buf *b, size_t start, size_t payload_len) {
  if (b->oom) {
    b->len = start;
    b->oom = false;
    return bp__fail(BP_ENOMEM, "frame: out of memory encoding a %zu-byte payload", payload_len);
  }
  size_t body_len = b->len - start - BP__FRAME_PREFIX;
  if (body_len > UINT32_MAX) {
    b->len = start;
    return bp__fail(BP_ELIMIT, "frame: body of %zu bytes exceeds the u32 frame limit", body_len);
  }
  uint8_t *p = b->data + start;
  bp__put_be32(p, (uint32_t)body_len);
  bp__put_be32(p + 4, bp__crc32(p + BP__FRAME_PREFIX, body_len));
  return BP_OK;
}

bp_status bp__frame_encode(bp__buf *b, const bp__frame *f) {
  size_t start = b->len;
  uint8_t prefix[BP__FRAME_PREFIX] = {0};
  bp__buf_append(b, prefix, sizeof prefix);
  bp__frame_encode_body(b, f);
  return finish_frame(b, start, f->payload_len);
}

bp_status bp__frame_parts_encode(bp__frame_parts *p, const bp__frame *f) {
  size_t room = body_bound(f);
  p->data = room == 0 ? NULL : room <= sizeof p->inline_data ? p->inline_data : malloc(room);
  if (!p->data) return bp__fail(BP_ENOMEM, "frame: out of memory encoding a %zu-byte payload", f->payload_len);
  uint8_t *o = p->data;
  o = emit_ids(o, &f->header);
  p->head = (size_t)(o - p->data);
  o = emit_chain_open(emit_content(o, f));
  p->mid = (size_t)(o - p->data) - p->head;
  o = emit_coord(emit_chain_rest(o, f), f);
  p->tail = (size_t)(o - p->data) - p->head - p->mid;
  p->payload_len = f->payload_len;
  return BP_OK;
}

void bp__frame_parts_free(bp__frame_parts *p) {
  if (p->data != p->inline_data) free(p->data);
  p->data = NULL;
}

bp_status bp__frame_encode_parts(bp__buf *b, const bp__frame_parts *p, const bp_header *h, const uint8_t prev_hash[32]) {
  size_t start = b->len;
  /* The scalars take at most 2 + 9 * 9 bytes with their keys; the hash 67. */
  if (!bp__buf_reserve(b, BP__FRAME_PREFIX + p->head + p->mid + p->tail + 256)) return finish_frame(b, start, p->payload_len);
  uint8_t *o = b->data + start + BP__FRAME_PREFIX;
  memcpy(o, p->data, p->head);
  o = emit_scalars(o + p->head, h);
  memcpy(o, p->data + p->head, p->mid);
  o = bp__mp_emit_byte_array(o + p->mid, prev_hash, 32);
  memcpy(o, p->data + p->head + p->mid, p->tail);
  b->len = (size_t)(o + p->tail - b->data);
  return finish_frame(b, start, p->payload_len);
}

static const bp__field position_fields[] = {
    BP__FIELD("wall_ms"),
    BP__FIELD("counter"),
    BP__FIELD("depth"),
    BP__FIELD("lane"),
    BP__FIELD("sequence")};

static bp_status decode_position(bp__mp_reader *r, bp_position *p) {
  uint32_t n;
  bp_status st = bp__mp_read_map(r, &n);
  unsigned seen = 0;
  for (uint32_t i = 0; !st && i < n; i++) {
    const char *k;
    uint32_t kl;
    if ((st = read_key(r, &k, &kl))) break;
    int idx = bp__field_find(position_fields, 5, i, k, kl);
    if (idx >= 0 && (st = bp__field_mark_seen(&seen, idx, position_fields, "position"))) break;
    switch (idx) {
      case 0: st = bp__mp_read_u64(r, &p->wall_ms); break;
      case 1: st = bp__mp_read_u16(r, &p->counter); break;
      case 2: st = bp__mp_read_u32(r, &p->depth); break;
      case 3: st = bp__mp_read_u32(r, &p->lane); break;
      case 4: st = bp__mp_read_u32(r, &p->sequence); break;
      default: st = bp__mp_skip(r); break;
    }
  }
  if (!st) st = bp__field_require(seen, 0x1f, position_fields, "position");
  return st;
}

static const bp__field header_fields[] = {
    BP__FIELD("event_id"),
    BP__FIELD("correlation_id"),
    BP__FIELD("causation_id"),
    BP__FIELD("timestamp_us"),
    BP__FIELD("position"),
    BP__FIELD("payload_size"),
    BP__FIELD("event_kind"),
    BP__FIELD("flags"),
    BP__FIELD("content_hash")};

static bp_status decode_header(bp__mp_reader *r, bp_header *h) {
  uint32_t n;
  bp_status st = bp__mp_read_map(r, &n);
  unsigned seen = 0;
  memset(h, 0, sizeof *h);
  for (uint32_t i = 0; !st && i < n; i++) {
    const char *k;
    uint32_t kl;
    bool present = false;
    if ((st = read_key(r, &k, &kl))) break;
    int idx = bp__field_find(header_fields, 9, i, k, kl);
    if (idx >= 0 && (st = bp__field_mark_seen(&seen, idx, header_fields, "header"))) break;
    switch (idx) {
      case 0: st = bp__mp_read_id(r, &h->event_id); break;
      case 1: st = bp__mp_read_id(r, &h->correlation_id); break;
      case 2:
        st = bp__mp_read_nil_or(r, &present);
        if (!st && present) st = bp__mp_read_id(r, &h->causation_id);
        break;
      case 3: st = bp__mp_read_i64(r, &h->timestamp_us); break;
      case 4: st = decode_position(r, &h->position); break;
      case 5: st = bp__mp_read_u32(r, &h->payload_size); break;
      case 6: st = bp__mp_read_u16(r, &h->kind); break;
      case 7: st = bp__mp_read_u8(r, &h->flags); break;
      case 8: st = bp__mp_read_fixed_bytes(r, h->content_hash, 32); break;
      default: st = bp__mp_skip(r); break;
    }
  }
  /* content_hash has a serde default; every other field is required. */
  if (!st) st = bp__field_require(seen, 0xff, header_fields, "header");
  return st;
}

static const bp__field chain_fields[] = {BP__FIELD("prev_hash"), BP__FIELD("event_hash")};

static bp_status decode_chain(bp__mp_reader *r, bp_hash_chain *c) {
  uint32_t n;
  bp_status st = bp__mp_read_map(r, &n);
  unsigned seen = 0;
  for (uint32_t i = 0; !st && i < n; i++) {
    const char *k;
    uint32_t kl;
    if ((st = read_key(r, &k, &kl))) break;
    int idx = bp__field_find(chain_fields, 2, i, k, kl);
    if (idx >= 0 && (st = bp__field_mark_seen(&seen, idx, chain_fields, "hash_chain"))) break;
    if (idx == 0) st = bp__mp_read_fixed_bytes(r, c->prev_hash, 32);
    else if (idx == 1) st = bp__mp_read_fixed_bytes(r, c->event_hash, 32);
    else st = bp__mp_skip(r);
  }
  if (!st) st = bp__field_require(seen, 0x3, chain_fields, "hash_chain");
  return st;
}

static const bp__field event_fields[] = {BP__FIELD("header"), BP__FIELD("payload"), BP__FIELD("hash_chain")};

static bp_status decode_event(bp__mp_reader *r, bp__buf *scratch, bp__frame *f) {
  uint32_t n;
  bp_status st = bp__mp_read_map(r, &n);
  unsigned seen = 0;
  for (uint32_t i = 0; !st && i < n; i++) {
    const char *k;
    uint32_t kl;
    bool present = false;
    if ((st = read_key(r, &k, &kl))) break;
    int idx = bp__field_find(event_fields, 3, i, k, kl);
    if (idx >= 0 && (st = bp__field_mark_seen(&seen, idx, event_fields, "event"))) break;
    switch (idx) {
      case 0: st = decode_header(r, &f->header); break;
      case 1: st = bp__mp_read_bytes(r, scratch, &f->payload, &f->payload_len); break;
      case 2:
        st = bp__mp_read_nil_or(r, &present);
        f->has_chain = present;
        if (!st && present) st = decode_chain(r, &f->chain);
        break;
      default: st = bp__mp_skip(r); break;
    }
  }
  /* hash_chain is an Option: absent means none. */
  if (!st) st = bp__field_require(seen, 0x3, event_fields, "event");
  return st;
}

/* The canonical layout (bp__frame_decode_canonical). Every writer of this format (the crate and this
 * library) puts a frame's keys in one order, byte arrays as integer arrays and
 * ids as bin8. canon_frame reads exactly that layout in one pass: it compares
 * the key bytes in place and reads each value in the form it must have. For
 * anything else (another key order, a missing or extra key, a bin payload, a
 * negative timestamp, a truncated body) it declines without recording an
 * error, and the general decoder below, which takes every valid encoding,
 * reads the frame. So for any input it either yields what the general decoder
 * yields or declines. */

bool bp__frame_equal(const bp__frame *a, const bp__frame *b) {
  const bp_header *x = &a->header, *y = &b->header;
  return bp_id_eq(x->event_id, y->event_id) && bp_id_eq(x->correlation_id, y->correlation_id) &&
         bp_id_eq(x->causation_id, y->causation_id) && x->timestamp_us == y->timestamp_us &&
         x->position.wall_ms == y->position.wall_ms && x->position.counter == y->position.counter &&
         x->position.depth == y->position.depth && x->position.lane == y->position.lane &&
         x->position.sequence == y->position.sequence && x->payload_size == y->payload_size &&
         x->kind == y->kind && x->flags == y->flags && memcmp(x->content_hash, y->content_hash, 32) == 0 &&
         a->entity_len == b->entity_len && memcmp(a->entity, b->entity, a->entity_len) == 0 &&
         a->scope_len == b->scope_len && memcmp(a->scope, b->scope, a->scope_len) == 0 &&
         a->payload_len == b->payload_len && (a->payload == NULL) == (b->payload == NULL) &&
         (a->payload == NULL || a->payload_len == 0 || memcmp(a->payload, b->payload, a->payload_len) == 0) &&
         a->has_chain == b->has_chain && (!a->has_chain || memcmp(&a->chain, &b->chain, sizeof a->chain) == 0);
}
/* The payload: an integer array of any length, into scratch (or only
 * validated when scratch is NULL, as the general decoder does). */
static bool canon_payload(canon *c, bp__buf *scratch, bp__frame *f) {
  size_t left = (size_t)(c->end - c->p), hdr, n;
  if (left == 0) return false;
  const uint8_t *p = c->p;
  if ((p[0] & 0xf0) == 0x90) { n = p[0] & 0x0f; hdr = 1; }
  else if (p[0] == 0xdc && left >= 3) { n = bp__get_be16(p + 1); hdr = 3; }
  else if (p[0] == 0xdd && left >= 5) { n = bp__get_be32(p + 1); hdr = 5; }
  else return false;
  if (left - hdr < n) return false; /* every element takes a byte at least */
  c->p += hdr;
  f->payload_len = n;
  if (scratch) {
    scratch->len = 0;
    if (!bp__buf_reserve(scratch, n ? n : 1)) return false;
    if (!bp__mp_take_int_bytes(&c->p, c->end, scratch->data, n)) return false;
    scratch->len = n;
    f->payload = scratch->data;
    return true;
  }
  uint8_t sink[256];
  for (size_t done = 0; done < n;) {
    size_t k = n - done < sizeof sink ? n - done : sizeof sink;
    if (!bp__mp_take_int_bytes(&c->p, c->end, sink, k)) return false;
    done += k;
  }
  return true;
}

bool bp__frame_decode_canonical(const uint8_t *body, size_t len, bp__buf *scratch, bp__frame *f) {
  canon c = {body, body + len};
  bp_header *h = &f->header;
  /* Every field is assigned below (a memset of the whole record costs more
   * than the rest of the header). */
  f->payload = NULL;
  if (!CANON_LIT(&c, "\x83\xa5" "event" "\x83\xa6" "header" "\x89\xa8" "event_id") || !canon_id(&c, &h->event_id) ||
      !CANON_LIT(&c, "\xae" "correlation_id") || !canon_id(&c, &h->correlation_id) ||
      !CANON_LIT(&c, "\xac" "causation_id"))
    return false;
  if (c.p < c.end && *c.p == 0xc0) {
    c.p++;
    h->causation_id = (bp_id){0, 0};
  } else if (!canon_id(&c, &h->causation_id)) {
    return false;
  }
  if (!CANON_LIT(&c, "\xac" "timestamp_us")) return false;
  CANON_UINT(&c, INT64_MAX, h->timestamp_us);
  if (!CANON_LIT(&c, "\xa8" "position" "\x85\xa7" "wall_ms")) return false;
  CANON_UINT(&c, UINT64_MAX, h->position.wall_ms);
  if (!CANON_LIT(&c, "\xa7" "counter")) return false;
  CANON_UINT(&c, UINT16_MAX, h->position.counter);
  if (!CANON_LIT(&c, "\xa5" "depth")) return false;
  CANON_UINT(&c, UINT32_MAX, h->position.depth);
  if (!CANON_LIT(&c, "\xa4" "lane")) return false;
  CANON_UINT(&c, UINT32_MAX, h->position.lane);
  if (!CANON_LIT(&c, "\xa8" "sequence")) return false;
  CANON_UINT(&c, UINT32_MAX, h->position.sequence);
  if (!CANON_LIT(&c, "\xac" "payload_size")) return false;
  CANON_UINT(&c, UINT32_MAX, h->payload_size);
  if (!CANON_LIT(&c, "\xaa" "event_kind")) return false;
  CANON_UINT(&c, UINT16_MAX, h->kind);
  if (!CANON_LIT(&c, "\xa5" "flags")) return false;
  CANON_UINT(&c, UINT8_MAX, h->flags);
  if (!CANON_LIT(&c, "\xac" "content_hash")) return false;
  const uint8_t *content = c.p;
  if (!canon_hash(&c, h->content_hash)) return false;
  const uint8_t *content_end = c.p;
  if (!CANON_LIT(&c, "\xa7" "payload") || !canon_payload(&c, scratch, f) ||
      !CANON_LIT(&c, "\xaa" "hash_chain"))
    return false;
  if (c.p < c.end && *c.p == 0xc0) {
    c.p++;
    f->has_chain = false;
    memset(&f->chain, 0, sizeof f->chain);
  } else {
    if (!CANON_LIT(&c, "\x82\xa9" "prev_hash") || !canon_hash(&c, f->chain.prev_hash) ||
        !CANON_LIT(&c, "\xaa" "event_hash"))
      return false;
    /* event_hash is content_hash in every event: when its bytes are the
     * same bytes, they decode to the same 32 values. */
    size_t clen = (size_t)(content_end - content);
    if ((size_t)(c.end - c.p) >= clen && memcmp(c.p, content, clen) == 0) {
      memcpy(f->chain.event_hash, h->content_hash, 32);
      c.p += clen;
    } else if (!canon_hash(&c, f->chain.event_hash)) {
      return false;
    }
    f->has_chain = true;
  }
  return CANON_LIT(&c, "\xa6" "entity") && canon_str(&c, &f->entity, &f->entity_len) &&
         CANON_LIT(&c, "\xa5" "scope") && canon_str(&c, &f->scope, &f->scope_len) && c.p == c.end &&
         f->payload_len == h->payload_size;
}

static const bp__field frame_fields[] = {BP__FIELD("event"), BP__FIELD("entity"), BP__FIELD("scope")};

bp_status bp__frame_decode_body(const uint8_t *body, size_t len, bp__buf *scratch, bp__frame *f) {
  if (bp__frame_decode_canonical(body, len, scratch, f)) return BP_OK;
  return bp__frame_decode_general(body, len, scratch, f);
}

bp_status bp__frame_check_whole(const uint8_t *frame, size_t len, bp__buf *scratch, bp__frame *f) {
  if (len < BP__FRAME_PREFIX || len - BP__FRAME_PREFIX > UINT32_MAX)
    return bp__fail(BP_EINVAL, "frame: %zu bytes cannot be a frame", len);
  uint32_t body = bp__get_be32(frame);
  if (body != len - BP__FRAME_PREFIX)
    return bp__fail(BP_EINVAL, "frame: its length prefix says %u body bytes, %zu were given", body,
                    len - BP__FRAME_PREFIX);
  if (bp__crc32(frame + BP__FRAME_PREFIX, body) != bp__get_be32(frame + 4))
    return bp__fail(BP_ECRC, "frame: CRC mismatch");
  bp_status st = bp__frame_decode_body(frame + BP__FRAME_PREFIX, body, scratch, f);
  if (st) return st;
  uint8_t hash[32];
  bp_compute_hash(f->payload, f->payload_len, hash);
  if (memcmp(hash, f->header.content_hash, 32) != 0)
    return bp__fail(BP_ESERIAL, "frame: its content hash is not the BLAKE3 of its payload");
  if (f->has_chain && memcmp(hash, f->chain.event_hash, 32) != 0)
    return bp__fail(BP_ESERIAL, "frame: its chain's event hash is not the BLAKE3 of its payload");
  return BP_OK;
}

bp_status bp__frame_decode_general(const uint8_t *body, size_t len, bp__buf *scratch, bp__frame *f) {
  bp__mp_reader r;
  bp__mp_reader_init(&r, body, len);
  memset(f, 0, sizeof *f);
  uint32_t n;
  bp_status st = bp__mp_read_map(&r, &n);
  unsigned seen = 0;
  for (uint32_t i = 0; !st && i < n; i++) {
    const char *k;
    uint32_t kl, sl;
    if ((st = read_key(&r, &k, &kl))) break;
    int idx = bp__field_find(frame_fields, 3, i, k, kl);
    if (idx >= 0 && (st = bp__field_mark_seen(&seen, idx, frame_fields, "frame"))) break;
    switch (idx) {
      case 0: st = decode_event(&r, scratch, f); break;
      case 1: st = bp__mp_read_str(&r, &f->entity, &sl); f->entity_len = sl; break;
      case 2: st = bp__mp_read_str(&r, &f->scope, &sl); f->scope_len = sl; break;
      default: st = bp__mp_skip(&r); break;
    }
  }
  if (!st) st = bp__field_require(seen, 0x7, frame_fields, "frame");
  if (!st) st = check_end(&r, "frame");
  if (!st && f->payload_len != f->header.payload_size)
    st = bp__fail(BP_ESERIAL, "frame: payload has %zu bytes but payload_size says %u",
                  f->payload_len, f->header.payload_size);
  return st;
}

/* --------------------------------------------------------- segment header */

void bp__segment_header_encode(bp__buf *b, const bp__segment_header *h) {
  bp__buf_append(b, BP__SEGMENT_MAGIC, 4);
  size_t len_at = b->len;
  uint8_t zero[4] = {0};
  bp__buf_append(b, zero, 4);
  size_t start = b->len;
  bp__mp_put_map(b, 4);
  bp__mp_put_lit(b, "version");
  bp__mp_put_uint(b, h->version);
  bp__mp_put_lit(b, "flags");
  bp__mp_put_uint(b, h->flags);
  bp__mp_put_lit(b, "created_ns");
  bp__mp_put_int(b, h->created_ns);
  bp__mp_put_lit(b, "segment_id");
  bp__mp_put_uint(b, h->segment_id);
  if (!b->oom) bp__put_be32(b->data + len_at, (uint32_t)(b->len - start));
}

static const bp__field segment_fields[] = {
    BP__FIELD("version"),
    BP__FIELD("flags"),
    BP__FIELD("created_ns"),
    BP__FIELD("segment_id")};

bool bp__segment_header_torn(const uint8_t *head, size_t have, size_t size) {
  if (memcmp(head, BP__SEGMENT_MAGIC, have < 4 ? have : 4) != 0) return false;
  return size < 8 || (have >= 8 && (size_t)bp__get_be32(head + 4) > size - 8);
}

bp_status bp__segment_header_decode(const uint8_t *data, size_t len, bp__segment_header *h,
                                    size_t *consumed) {
  if (len < 8) return bp__fail(BP_ECORRUPT, "segment header: file has only %zu bytes", len);
  if (memcmp(data, BP__SEGMENT_MAGIC, 4) != 0)
    return bp__fail(BP_ECORRUPT, "segment header: bad magic (not an FBAT segment)");
  uint32_t hlen = bp__get_be32(data + 4);
  if (hlen > len - 8)
    return bp__fail(BP_ECORRUPT, "segment header: header_len %u runs past the end of the file", hlen);
  bp__mp_reader r;
  bp__mp_reader_init(&r, data + 8, hlen);
  memset(h, 0, sizeof *h);
  uint32_t n;
  bp_status st = bp__mp_read_map(&r, &n);
  unsigned seen = 0;
  for (uint32_t i = 0; !st && i < n; i++) {
    const char *k;
    uint32_t kl;
    if ((st = read_key(&r, &k, &kl))) break;
    int idx = bp__field_find(segment_fields, 4, i, k, kl);
    if (idx >= 0 && (st = bp__field_mark_seen(&seen, idx, segment_fields, "segment header"))) break;
    switch (idx) {
      case 0: st = bp__mp_read_u32(&r, &h->version); break;
      case 1: st = bp__mp_read_u32(&r, &h->flags); break;
      case 2: st = bp__mp_read_i64(&r, &h->created_ns); break;
      case 3: st = bp__mp_read_u64(&r, &h->segment_id); break;
      default: st = bp__mp_skip(&r); break;
    }
  }
  if (!st) st = bp__field_require(seen, 0xf, segment_fields, "segment header");
  if (!st) st = check_end(&r, "segment header");
  if (st) return bp__fail_within(BP_ECORRUPT, "segment header");
  if (h->version != BP__SEGMENT_VERSION)
    return bp__fail(BP_ECORRUPT, "segment header: unsupported version %u", h->version);
  *consumed = 8 + (size_t)hlen;
  return BP_OK;
}

/* ------------------------------------------------------------- coordinate */

void bp__coord_encode(bp__buf *b, const char *entity, size_t elen, const char *scope, size_t slen) {
  bp__mp_put_map(b, 2);
  bp__mp_put_lit(b, "entity");
  bp__mp_put_str(b, entity, elen);
  bp__mp_put_lit(b, "scope");
  bp__mp_put_str(b, scope, slen);
}

static const bp__field coord_fields[] = {BP__FIELD("entity"), BP__FIELD("scope")};

bp_status bp__coord_decode(const uint8_t *data, size_t len, const char **entity, size_t *elen,
                           const char **scope, size_t *slen) {
  bp__mp_reader r;
  bp__mp_reader_init(&r, data, len);
  uint32_t n, sl;
  bp_status st = bp__mp_read_map(&r, &n);
  unsigned seen = 0;
  for (uint32_t i = 0; !st && i < n; i++) {
    const char *k;
    uint32_t kl;
    if ((st = read_key(&r, &k, &kl))) break;
    int idx = bp__field_find(coord_fields, 2, i, k, kl);
    if (idx >= 0 && (st = bp__field_mark_seen(&seen, idx, coord_fields, "coordinate"))) break;
    if (idx == 0) { st = bp__mp_read_str(&r, entity, &sl); *elen = sl; }
    else if (idx == 1) { st = bp__mp_read_str(&r, scope, &sl); *slen = sl; }
    else st = bp__mp_skip(&r);
  }
  if (!st) st = bp__field_require(seen, 0x3, coord_fields, "coordinate");
  if (!st) st = check_end(&r, "coordinate");
  return st;
}

/* -------------------------------------------------------------- committed */

void bp__committed_encode(bp__buf *b, const bp__committed *c) {
  bp__mp_put_map(b, 4);
  bp__mp_put_lit(b, "payload");
  bp__buf_append(b, c->payload, c->payload_len);
  bp__mp_put_lit(b, "event_id");
  bp__mp_put_id(b, c->event_id);
  bp__mp_put_lit(b, "sequence");
  bp__mp_put_uint(b, c->sequence);
  bp__mp_put_lit(b, "hash");
  bp__mp_put_byte_array(b, c->hash, 32);
}

static const bp__field committed_fields[] = {
    BP__FIELD("payload"),
    BP__FIELD("event_id"),
    BP__FIELD("sequence"),
    BP__FIELD("hash")};

bp_status bp__committed_decode(const uint8_t *data, size_t len, bp__committed *c) {
  bp__mp_reader r;
  bp__mp_reader_init(&r, data, len);
  memset(c, 0, sizeof *c);
  uint32_t n;
  bp_status st = bp__mp_read_map(&r, &n);
  unsigned seen = 0;
  for (uint32_t i = 0; !st && i < n; i++) {
    const char *k;
    uint32_t kl;
    if ((st = read_key(&r, &k, &kl))) break;
    int idx = bp__field_find(committed_fields, 4, i, k, kl);
    if (idx >= 0 && (st = bp__field_mark_seen(&seen, idx, committed_fields, "committed"))) break;
    switch (idx) {
      case 0: {
        const uint8_t *at = r.p;
        st = bp__mp_skip(&r);
        c->payload = at;
        c->payload_len = (size_t)(r.p - at);
        break;
      }
      case 1: st = bp__mp_read_id(&r, &c->event_id); break;
      case 2: st = bp__mp_read_u64(&r, &c->sequence); break;
      case 3: st = bp__mp_read_fixed_bytes(&r, c->hash, 32); break;
      default: st = bp__mp_skip(&r); break;
    }
  }
  if (!st) st = bp__field_require(seen, 0xf, committed_fields, "committed");
  if (!st) st = check_end(&r, "committed");
  return st;
}

/* ------------------------------------------------------------ byte vectors */

/* Reads a Vec<u8> into a fresh allocation. */
static bp_status read_owned_bytes(bp__mp_reader *r, uint8_t **out, size_t *len) {
  bp__buf scratch;
  bp__buf_init(&scratch);
  const uint8_t *p;
  bp_status st = bp__mp_read_bytes(r, &scratch, &p, len);
  if (st) { bp__buf_free(&scratch); return st; }
  *out = malloc(*len ? *len : 1);
  if (!*out) { bp__buf_free(&scratch); return bp__fail(BP_ENOMEM, "out of memory"); }
  if (*len) memcpy(*out, p, *len);
  bp__buf_free(&scratch);
  return BP_OK;
}

static bp_status read_owned_str(bp__mp_reader *r, char **out) {
  const char *s;
  uint32_t n;
  bp_status st = bp__mp_read_str(r, &s, &n);
  if (st) return st;
  *out = malloc((size_t)n + 1);
  if (!*out) return bp__fail(BP_ENOMEM, "out of memory");
  memcpy(*out, s, n);
  (*out)[n] = '\0';
  return BP_OK;
}

/* A Vec<u128> as the crate's vec_u128_bytes writes it: an array of 16-integer arrays. */
static void put_id_vec(bp__buf *b, const bp_id *ids, size_t n) {
  bp__mp_put_array(b, (uint32_t)n);
  for (size_t i = 0; i < n; i++) {
    uint8_t raw[16];
    bp_id_to_bytes(ids[i], raw);
    bp__mp_put_byte_array(b, raw, 16);
  }
}

static bp_status read_id_vec(bp__mp_reader *r, bp_id **ids, size_t *n) {
  uint32_t count;
  bp_status st = bp__mp_read_array(r, &count);
  if (st) return st;
  if (count > bp__mp_remaining(r))
    return bp__fail(BP_ESERIAL, "id list of %u items is longer than its input", count);
  *ids = calloc(count ? count : 1, sizeof **ids);
  if (!*ids) return bp__fail(BP_ENOMEM, "out of memory");
  *n = count;
  for (uint32_t i = 0; !st && i < count; i++) st = bp__mp_read_id(r, &(*ids)[i]);
  return st;
}

/* An externally tagged enum variant: a one-entry map {name: value}. */
static bp_status read_variant(bp__mp_reader *r, const bp__field *names, int n, int *which,
                              const char *record) {
  uint32_t pairs;
  bp_status st = bp__mp_read_map(r, &pairs);
  if (st) return st;
  if (pairs != 1) return bp__fail(BP_ESERIAL, "%s: variant map has %u entries, expected 1", record, pairs);
  const char *k;
  uint32_t kl;
  if ((st = read_key(r, &k, &kl))) return st;
  *which = bp__field_find(names, n, 0, k, kl);
  if (*which < 0) return bp__fail(BP_ESERIAL, "%s: unknown variant \"%.*s\"", record, (int)kl, k);
  return BP_OK;
}

/* --------------------------------------------------------- wait condition */

static const bp__field wait_variants[] = {
    BP__FIELD("Timeout"),
    BP__FIELD("Event"),
    BP__FIELD("All"),
    BP__FIELD("Any"),
    BP__FIELD("Custom")};

void bp__wait_encode(bp__buf *b, const bp__wait *w) {
  bp__mp_put_map(b, 1);
  put_key(b, wait_variants[w->kind].name);
  switch (w->kind) {
    case BP__WAIT_TIMEOUT:
      bp__mp_put_map(b, 1);
      bp__mp_put_lit(b, "resume_at_ms");
      bp__mp_put_uint(b, w->resume_at_ms);
      break;
    case BP__WAIT_EVENT:
      bp__mp_put_map(b, 1);
      bp__mp_put_lit(b, "event_id");
      bp__mp_put_id(b, w->event_id);
      break;
    case BP__WAIT_ALL:
    case BP__WAIT_ANY:
      bp__mp_put_array(b, (uint32_t)w->n_children);
      for (size_t i = 0; i < w->n_children; i++) bp__wait_encode(b, &w->children[i]);
      break;
    case BP__WAIT_CUSTOM:
      bp__mp_put_map(b, 2);
      bp__mp_put_lit(b, "tag");
      bp__mp_put_uint(b, w->tag);
      bp__mp_put_lit(b, "data");
      bp__mp_put_byte_array(b, w->data, w->data_len);
      break;
  }
}

#define WAIT_MAX_DEPTH 64

static bp_status decode_fields_map(bp__mp_reader *r, const bp__field *names, int n,
                                   unsigned required, const char *record,
                                   bp_status (*field)(bp__mp_reader *, int, void *), void *ctx) {
  uint32_t pairs;
  bp_status st = bp__mp_read_map(r, &pairs);
  unsigned seen = 0;
  for (uint32_t i = 0; !st && i < pairs; i++) {
    const char *k;
    uint32_t kl;
    if ((st = read_key(r, &k, &kl))) break;
    int idx = bp__field_find(names, n, i, k, kl);
    if (idx >= 0 && (st = bp__field_mark_seen(&seen, idx, names, record))) break;
    st = idx >= 0 ? field(r, idx, ctx) : bp__mp_skip(r);
  }
  if (!st) st = bp__field_require(seen, required, names, record);
  return st;
}

static const bp__field timeout_fields[] = {BP__FIELD("resume_at_ms")};
static const bp__field event_id_fields[] = {BP__FIELD("event_id")};
static const bp__field wait_custom_fields[] = {BP__FIELD("tag"), BP__FIELD("data")};

static bp_status wait_field(bp__mp_reader *r, int idx, void *ctx) {
  bp__wait *w = ctx;
  switch (w->kind) {
    case BP__WAIT_TIMEOUT: return bp__mp_read_u64(r, &w->resume_at_ms);
    case BP__WAIT_EVENT: return bp__mp_read_id(r, &w->event_id);
    default:
      if (idx == 0) return bp__mp_read_u16(r, &w->tag);
      free(w->data);
      w->data = NULL;
      return read_owned_bytes(r, &w->data, &w->data_len);
  }
}

static bp_status decode_wait(bp__mp_reader *r, bp__wait *w, int depth) {
  if (depth > WAIT_MAX_DEPTH)
    return bp__fail(BP_ESERIAL, "wait condition: nested deeper than %d", WAIT_MAX_DEPTH);
  int which;
  bp_status st = read_variant(r, wait_variants, 5, &which, "wait condition");
  if (st) return st;
  w->kind = (bp__wait_kind)which;
  switch (w->kind) {
    case BP__WAIT_TIMEOUT:
      return decode_fields_map(r, timeout_fields, 1, 1, "Timeout", wait_field, w);
    case BP__WAIT_EVENT:
      return decode_fields_map(r, event_id_fields, 1, 1, "Event", wait_field, w);
    case BP__WAIT_CUSTOM:
      return decode_fields_map(r, wait_custom_fields, 2, 3, "Custom", wait_field, w);
    default: {
      uint32_t count;
      if ((st = bp__mp_read_array(r, &count))) return st;
      if (count > bp__mp_remaining(r))
        return bp__fail(BP_ESERIAL, "wait condition: %u children, input too short", count);
      w->children = calloc(count ? count : 1, sizeof *w->children);
      if (!w->children) return bp__fail(BP_ENOMEM, "out of memory");
      w->n_children = count;
      for (uint32_t i = 0; !st && i < count; i++) st = decode_wait(r, &w->children[i], depth + 1);
      return st;
    }
  }
}

bp_status bp__wait_decode(const uint8_t *data, size_t len, bp__wait *w) {
  bp__mp_reader r;
  bp__mp_reader_init(&r, data, len);
  memset(w, 0, sizeof *w);
  bp_status st = decode_wait(&r, w, 0);
  if (!st) st = check_end(&r, "wait condition");
  if (st) bp__wait_free(w);
  return st;
}

void bp__wait_free(bp__wait *w) {
  if (!w) return;
  for (size_t i = 0; i < w->n_children; i++) bp__wait_free(&w->children[i]);
  free(w->children);
  free(w->data);
  memset(w, 0, sizeof *w);
}

/* ----------------------------------------------------- compensation action */

static const bp__field comp_variants[] = {
    BP__FIELD("Rollback"),
    BP__FIELD("Notify"),
    BP__FIELD("Release"),
    BP__FIELD("Custom")};
static const bp__field rollback_fields[] = {BP__FIELD("event_ids")};
static const bp__field notify_fields[] = {BP__FIELD("target_id"), BP__FIELD("message")};
static const bp__field release_fields[] = {BP__FIELD("resource_ids")};
static const bp__field comp_custom_fields[] = {BP__FIELD("action_type"), BP__FIELD("data")};

void bp__compensation_encode(bp__buf *b, const bp__compensation *c) {
  bp__mp_put_map(b, 1);
  put_key(b, comp_variants[c->kind].name);
  switch (c->kind) {
    case BP__COMP_ROLLBACK:
    case BP__COMP_RELEASE:
      bp__mp_put_map(b, 1);
      put_key(b, c->kind == BP__COMP_ROLLBACK ? "event_ids" : "resource_ids");
      put_id_vec(b, c->ids, c->n_ids);
      break;
    case BP__COMP_NOTIFY:
      bp__mp_put_map(b, 2);
      bp__mp_put_lit(b, "target_id");
      bp__mp_put_id(b, c->target_id);
      bp__mp_put_lit(b, "message");
      bp__mp_put_cstr(b, c->text ? c->text : "");
      break;
    case BP__COMP_CUSTOM:
      bp__mp_put_map(b, 2);
      bp__mp_put_lit(b, "action_type");
      bp__mp_put_cstr(b, c->text ? c->text : "");
      bp__mp_put_lit(b, "data");
      bp__mp_put_byte_array(b, c->data, c->data_len);
      break;
  }
}

static bp_status comp_field(bp__mp_reader *r, int idx, void *ctx) {
  bp__compensation *c = ctx;
  switch (c->kind) {
    case BP__COMP_ROLLBACK:
    case BP__COMP_RELEASE:
      return read_id_vec(r, &c->ids, &c->n_ids);
    case BP__COMP_NOTIFY:
      if (idx == 0) return bp__mp_read_id(r, &c->target_id);
      return read_owned_str(r, &c->text);
    default:
      if (idx == 0) return read_owned_str(r, &c->text);
      return read_owned_bytes(r, &c->data, &c->data_len);
  }
}

bp_status bp__compensation_decode(const uint8_t *data, size_t len, bp__compensation *c) {
  bp__mp_reader r;
  bp__mp_reader_init(&r, data, len);
  memset(c, 0, sizeof *c);
  int which;
  bp_status st = read_variant(&r, comp_variants, 4, &which, "compensation action");
  if (!st) {
    c->kind = (bp__comp_kind)which;
    switch (c->kind) {
      case BP__COMP_ROLLBACK:
        st = decode_fields_map(&r, rollback_fields, 1, 1, "Rollback", comp_field, c);
        break;
      case BP__COMP_RELEASE:
        st = decode_fields_map(&r, release_fields, 1, 1, "Release", comp_field, c);
        break;
      case BP__COMP_NOTIFY:
        st = decode_fields_map(&r, notify_fields, 2, 3, "Notify", comp_field, c);
        break;
      case BP__COMP_CUSTOM:
        st = decode_fields_map(&r, comp_custom_fields, 2, 3, "Custom", comp_field, c);
        break;
    }
  }
  if (!st) st = check_end(&r, "compensation action");
  if (st) bp__compensation_free(c);
  return st;
}

void bp__compensation_free(bp__compensation *c) {
  if (!c) return;
  free(c->ids);
  free(c->text);
  free(c->data);
  memset(c, 0, sizeof *c);
}
