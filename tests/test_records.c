/* test_records.c - frame, segment header and policy record decoders: the
 * forms they accept and the malformed inputs they reject. */
#include "testutil.h"
#include "wire/records.h"

#include <zlib.h>

static bp__frame sample_frame(void) {
  static const uint8_t payload[] = {0x81, 0xa1, 'i', 0xcc, 0xc8};
  bp__frame f;
  memset(&f, 0, sizeof f);
  f.header.event_id = (bp_id){0x01a214b556387ddbull, 0xbb27743e201c2348ull};
  f.header.correlation_id = f.header.event_id;
  f.header.causation_id = (bp_id){1, 2};
  f.header.timestamp_us = 1767225600000000;
  f.header.position = bp_position_child_at(3, 1767225600000ull, 0);
  f.header.payload_size = sizeof payload;
  f.header.kind = 0xF07A;
  f.header.flags = BP_FLAG_TRANSACTIONAL;
  bp_compute_hash(payload, sizeof payload, f.header.content_hash);
  f.payload = payload;
  f.payload_len = sizeof payload;
  f.has_chain = true;
  memset(f.chain.prev_hash, 0x11, 32);
  memcpy(f.chain.event_hash, f.header.content_hash, 32);
  f.entity = "order:42";
  f.entity_len = 8;
  f.scope = "scope:beta";
  f.scope_len = 10;
  return f;
}

static void frame_round_trips_with_causation_and_chain(void **state) {
  (void)state;
  bp__frame f = sample_frame(), d;
  bp__buf b, scratch;
  bp__buf_init(&b);
  bp__buf_init(&scratch);
  assert_ok(bp__frame_encode(&b, &f));
  assert_int_equal(bp__get_be32(b.data), b.len - 8);
  assert_int_equal(bp__get_be32(b.data + 4), bp__crc32(b.data + 8, b.len - 8));
  assert_ok(bp__frame_decode_body(b.data + 8, b.len - 8, &scratch, &d));
  assert_true(bp_id_eq(d.header.causation_id, f.header.causation_id));
  assert_int_equal(d.header.flags, BP_FLAG_TRANSACTIONAL);
  assert_int_equal(d.header.position.sequence, 3);
  tu_assert_bytes_eq(d.payload, d.payload_len, f.payload, f.payload_len, "payload");
  assert_memory_equal(d.chain.prev_hash, f.chain.prev_hash, 32);
  /* Without scratch the payload is validated and skipped. */
  assert_ok(bp__frame_decode_body(b.data + 8, b.len - 8, NULL, &d));
  assert_null(d.payload);
  assert_int_equal(d.payload_len, 5);
  bp__buf_free(&b);
  bp__buf_free(&scratch);
}

/* A hand-built body: fields in another order, an unknown field, bin payload,
 * bin content hash, no hash_chain key at all. */
static void frame_decoder_accepts_any_valid_shape(void **state) {
  (void)state;
  bp__buf b;
  bp__buf_init(&b);
  bp__mp_put_map(&b, 4);
  bp__mp_put_cstr(&b, "scope"); bp__mp_put_cstr(&b, "s");
  bp__mp_put_cstr(&b, "future_field"); bp__mp_put_array(&b, 2); bp__mp_put_nil(&b); bp__mp_put_uint(&b, 9);
  bp__mp_put_cstr(&b, "entity"); bp__mp_put_cstr(&b, "e");
  bp__mp_put_cstr(&b, "event");
  bp__mp_put_map(&b, 2);
  bp__mp_put_cstr(&b, "payload"); bp__mp_put_bin(&b, "\xc0", 1);
  bp__mp_put_cstr(&b, "header");
  bp__mp_put_map(&b, 9);
  bp__mp_put_cstr(&b, "flags"); bp__mp_put_uint(&b, 8);
  bp__mp_put_cstr(&b, "event_kind"); bp__mp_put_uint(&b, 0x1001);
  bp__mp_put_cstr(&b, "payload_size"); bp__mp_put_uint(&b, 1);
  bp__mp_put_cstr(&b, "content_hash"); { uint8_t h[32] = {7}; bp__mp_put_bin(&b, h, 32); }
  bp__mp_put_cstr(&b, "position"); bp__mp_put_map(&b, 5);
  const char *pf[] = {"sequence", "lane", "depth", "counter", "wall_ms"};
  for (int i = 0; i < 5; i++) { bp__mp_put_cstr(&b, pf[i]); bp__mp_put_uint(&b, (uint64_t)i); }
  bp__mp_put_cstr(&b, "timestamp_us"); bp__mp_put_int(&b, -5);
  bp__mp_put_cstr(&b, "causation_id"); bp__mp_put_nil(&b);
  bp__mp_put_cstr(&b, "correlation_id"); bp__mp_put_id(&b, (bp_id){3, 4});
  bp__mp_put_cstr(&b, "event_id"); bp__mp_put_id(&b, (bp_id){5, 6});
  bp__frame d;
  bp__buf scratch;
  bp__buf_init(&scratch);
  assert_ok(bp__frame_decode_body(b.data, b.len, &scratch, &d));
  assert_int_equal(d.header.flags, 8);
  assert_int_equal(d.header.timestamp_us, -5);
  assert_int_equal(d.header.position.wall_ms, 4);
  assert_int_equal(d.header.position.sequence, 0);
  assert_int_equal(d.header.content_hash[0], 7);
  assert_false(d.has_chain);
  assert_true(bp_id_is_nil(d.header.causation_id));
  assert_int_equal(d.payload_len, 1);
  assert_int_equal(d.payload[0], 0xc0);
  bp__buf_free(&b);
  bp__buf_free(&scratch);
}

static bp__buf encoded_body(void) {
  bp__frame f = sample_frame();
  bp__buf b;
  bp__buf_init(&b);
  bp__frame_encode_body(&b, &f);
  return b;
}

static void frame_body_truncated_anywhere_is_rejected(void **state) {
  (void)state;
  bp__buf b = encoded_body();
  bp__frame d;
  for (size_t cut = 0; cut < b.len; cut++) {
    uint8_t *copy = malloc(cut ? cut : 1);
    memcpy(copy, b.data, cut);
    if (bp__frame_decode_body(copy, cut, NULL, &d) != BP_ESERIAL)
      fail_msg("a body cut to %zu of %zu bytes was accepted", cut, b.len);
    free(copy);
  }
  bp__buf_free(&b);
}

static void frame_with_trailing_bytes_is_rejected(void **state) {
  (void)state;
  bp__buf b = encoded_body();
  bp__buf_put1(&b, 0x00);
  bp__frame d;
  assert_status(bp__frame_decode_body(b.data, b.len, NULL, &d), BP_ESERIAL);
  assert_non_null(strstr(bp_last_error()->message, "trailing"));
  bp__buf_free(&b);
}

static void frame_with_wrong_payload_size_is_rejected(void **state) {
  (void)state;
  bp__frame f = sample_frame(), d;
  f.header.payload_size = 4;
  bp__buf b;
  bp__buf_init(&b);
  bp__frame_encode_body(&b, &f);
  assert_status(bp__frame_decode_body(b.data, b.len, NULL, &d), BP_ESERIAL);
  assert_non_null(strstr(bp_last_error()->message, "payload_size"));
  bp__buf_free(&b);
}

static void frame_missing_or_duplicate_field_is_rejected(void **state) {
  (void)state;
  bp__buf b;
  bp__buf_init(&b);
  bp__mp_put_map(&b, 2);
  bp__mp_put_cstr(&b, "entity"); bp__mp_put_cstr(&b, "e");
  bp__mp_put_cstr(&b, "scope"); bp__mp_put_cstr(&b, "s");
  bp__frame d;
  assert_status(bp__frame_decode_body(b.data, b.len, NULL, &d), BP_ESERIAL);
  assert_non_null(strstr(bp_last_error()->message, "\"event\""));
  b.len = 0;
  bp__mp_put_map(&b, 2);
  bp__mp_put_cstr(&b, "entity"); bp__mp_put_cstr(&b, "e");
  bp__mp_put_cstr(&b, "entity"); bp__mp_put_cstr(&b, "f");
  assert_status(bp__frame_decode_body(b.data, b.len, NULL, &d), BP_ESERIAL);
  assert_non_null(strstr(bp_last_error()->message, "duplicate"));
  bp__buf_free(&b);
}

static void frame_with_wrong_types_is_rejected(void **state) {
  (void)state;
  bp__buf b;
  bp__buf_init(&b);
  bp__mp_put_array(&b, 3); /* a frame is a map */
  bp__frame d;
  assert_status(bp__frame_decode_body(b.data, b.len, NULL, &d), BP_ESERIAL);
  b.len = 0;
  bp__mp_put_map(&b, 1);
  bp__mp_put_uint(&b, 1); /* non-string key */
  bp__mp_put_uint(&b, 1);
  assert_status(bp__frame_decode_body(b.data, b.len, NULL, &d), BP_ESERIAL);
  bp__buf_free(&b);
}

/* The canonical fast path and the general decoder must agree on every input:
 * same status, and the same frame when both succeed. */
static void check_decoders_agree(const uint8_t *body, size_t len, const char *what, size_t at) {
  bp__buf s1, s2;
  bp__buf_init(&s1);
  bp__buf_init(&s2);
  bp__frame a, b;
  for (int with_scratch = 0; with_scratch < 2; with_scratch++) {
    bp_status sa = bp__frame_decode_body(body, len, with_scratch ? &s1 : NULL, &a);
    bp_status sb = bp__frame_decode_general(body, len, with_scratch ? &s2 : NULL, &b);
    if (sa != sb) fail_msg("%s at %zu: decode_body says %s, the general decoder %s", what, at, bp_status_name(sa),
                           bp_status_name(sb));
    if (sa == BP_OK && !bp__frame_equal(&a, &b)) fail_msg("%s at %zu: the two decoders read different frames", what, at);
  }
  bp__buf_free(&s1);
  bp__buf_free(&s2);
}

static void fast_and_general_frame_decoders_agree_on_damaged_bodies(void **state) {
  (void)state;
  static const uint8_t long_payload[40] = {0x92, 0xcc, 0x80, 0x7f, 0xcc, 0xcc, 0xcc};
  static const char long_entity[] = "entity:with-a-name-longer-than-31-bytes";
  static const uint8_t flips[] = {0x00, 0x01, 0x10, 0x20, 0x7f, 0x80, 0x90, 0xa0, 0xc0, 0xc4,
                                  0xcc, 0xcd, 0xce, 0xcf, 0xd9, 0xdc, 0xdd, 0xff};
  for (int variant = 0; variant < 5; variant++) {
    bp__frame f = sample_frame();
    if (variant == 1) { f.header.causation_id = (bp_id){0, 0}; f.has_chain = false; }
    if (variant == 2) { f.payload_len = 0; f.header.payload_size = 0; }
    if (variant == 3) {
      f.payload = long_payload;
      f.payload_len = f.header.payload_size = sizeof long_payload;
      f.entity = long_entity;
      f.entity_len = strlen(long_entity);
    }
    if (variant == 4) { f.header.position.counter = 300; f.header.timestamp_us = 5; f.header.flags = 0xff; }
    bp__buf b;
    bp__buf_init(&b);
    bp__frame_encode_body(&b, &f);
    /* What the writer emits is what the fast path reads. */
    bp__frame d;
    bp__buf scratch;
    bp__buf_init(&scratch);
    if (!bp__frame_decode_canonical(b.data, b.len, &scratch, &d)) fail_msg("variant %d: the fast path declined the writer's own frame", variant);
    if (!bp__frame_equal(&d, &f)) fail_msg("variant %d: the fast path read another frame than was written", variant);
    bp__buf_free(&scratch);

    check_decoders_agree(b.data, b.len, "intact", 0);
    uint8_t *copy = malloc(b.len);
    for (size_t cut = 0; cut < b.len; cut++) {
      memcpy(copy, b.data, cut);
      check_decoders_agree(copy, cut, "cut", cut);
    }
    for (size_t at = 0; at < b.len; at++) {
      memcpy(copy, b.data, b.len);
      for (size_t k = 0; k < sizeof flips; k++) {
        if (flips[k] == b.data[at]) continue;
        copy[at] = flips[k];
        check_decoders_agree(copy, b.len, "flip", at);
      }
    }
    free(copy);
    bp__buf_free(&b);
  }
}

/* The writer prepares a frame's parts before its event's place is known and
 * joins them under its lock: the result must be, byte for byte, the frame the
 * one-pass encoder writes, for any field values (every integer width, nil
 * causation, empty and large payloads, long names, heap-held parts). */
static void frame_from_parts_is_byte_identical_to_the_one_pass_encoding(void **state) {
  (void)state;
  static uint8_t payload[3000];
  static char name[300];
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (int round = 0; round < 2000; round++) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    bp__frame f = sample_frame();
    size_t plen = round % 7 == 0 ? 0 : round % 11 == 0 ? 1500 + x % 1500 : x % 40;
    for (size_t i = 0; i < plen; i++) payload[i] = (uint8_t)(x >> (i % 56)) ^ (uint8_t)i;
    f.payload = payload;
    f.payload_len = f.header.payload_size = (uint32_t)plen;
    size_t nlen = round % 13 == 0 ? 31 + x % 250 : 1 + x % 30;
    memset(name, 'a' + (int)(x % 26), nlen);
    f.entity = name;
    f.entity_len = nlen;
    if (round % 3 == 0) f.header.causation_id = (bp_id){0, 0};
    int w = round % 5; /* integer widths: fixint, 8, 16, 32, 64 bits */
    static const uint64_t widths[5] = {0x7f, 0xff, 0xffff, 0xffffffffull, UINT64_MAX};
    f.header.timestamp_us = (int64_t)((x >> 3) & (widths[w] >> 1));
    f.header.position.wall_ms = (x >> 5) & widths[(w + 1) % 5];
    f.header.position.counter = (uint16_t)(x >> 9);
    f.header.position.depth = (uint32_t)((x >> 11) & widths[(w + 2) % 5]);
    f.header.position.lane = (uint32_t)((x >> 13) & widths[(w + 3) % 5]);
    f.header.position.sequence = (uint32_t)(x >> 17);
    f.header.kind = (bp_kind)(x >> 23);
    f.header.flags = (uint8_t)(x >> 29);
    for (int i = 0; i < 32; i++) {
      f.header.content_hash[i] = (uint8_t)(x >> (i % 60));
      f.chain.prev_hash[i] = (uint8_t)(x >> ((i + 3) % 60)) ^ 0x80;
    }
    memcpy(f.chain.event_hash, f.header.content_hash, 32);

    bp__buf one, joined;
    bp__buf_init(&one);
    bp__buf_init(&joined);
    assert_ok(bp__frame_encode(&one, &f));
    bp__frame_parts parts;
    assert_ok(bp__frame_parts_encode(&parts, &f));
    bp__buf_append(&joined, "xyz", 3); /* joined after other frames in the buffer */
    assert_ok(bp__frame_encode_parts(&joined, &parts, &f.header, f.chain.prev_hash));
    if (joined.len - 3 != one.len || memcmp(joined.data + 3, one.data, one.len) != 0)
      fail_msg("round %d: joined frame (%zu bytes) differs from the one-pass frame (%zu bytes)", round,
               joined.len - 3, one.len);
    bp__frame_parts_free(&parts);
    bp__buf_free(&one);
    bp__buf_free(&joined);
  }
}

static void segment_header_rejects_bad_magic_version_and_length(void **state) {
  (void)state;
  bp__segment_header h = {1, 0, 123456789, 7}, d;
  bp__buf b;
  bp__buf_init(&b);
  bp__segment_header_encode(&b, &h);
  size_t consumed;
  assert_ok(bp__segment_header_decode(b.data, b.len, &d, &consumed));
  assert_int_equal(d.segment_id, 7);
  assert_int_equal(consumed, b.len);

  b.data[0] = 'X';
  assert_status(bp__segment_header_decode(b.data, b.len, &d, &consumed), BP_ECORRUPT);
  assert_non_null(strstr(bp_last_error()->message, "magic"));
  b.data[0] = 'F';
  assert_status(bp__segment_header_decode(b.data, b.len - 1, &d, &consumed), BP_ECORRUPT);
  assert_status(bp__segment_header_decode(b.data, 5, &d, &consumed), BP_ECORRUPT);
  bp__buf_free(&b);

  h.version = 2;
  bp__buf_init(&b);
  bp__segment_header_encode(&b, &h);
  assert_status(bp__segment_header_decode(b.data, b.len, &d, &consumed), BP_ECORRUPT);
  assert_non_null(strstr(bp_last_error()->message, "version 2"));
  bp__buf_free(&b);
}

/* A header field the decoder does not know is skipped, so renaming one makes
 * it missing; the message names the record once, not once per layer. */
static void segment_header_with_a_missing_field_names_it_once(void **state) {
  (void)state;
  bp__segment_header h = {1, 0, 123456789, 7}, d;
  bp__buf b;
  bp__buf_init(&b);
  bp__segment_header_encode(&b, &h);
  uint8_t *key = memmem(b.data, b.len, "flags", 5);
  assert_non_null(key);
  key[4] = 'z';
  size_t consumed;
  assert_status(bp__segment_header_decode(b.data, b.len, &d, &consumed), BP_ECORRUPT);
  const char *msg = bp_last_error()->message;
  assert_string_equal(msg, "segment header: missing field \"flags\"");
  bp__buf_free(&b);
}

static void wait_condition_trees_round_trip(void **state) {
  (void)state;
  uint8_t data[] = {1, 2, 250};
  bp__wait leaves[3];
  memset(leaves, 0, sizeof leaves);
  leaves[0].kind = BP__WAIT_TIMEOUT;
  leaves[0].resume_at_ms = 1767225600000ull;
  leaves[1].kind = BP__WAIT_CUSTOM;
  leaves[1].tag = 513;
  leaves[1].data = data;
  leaves[1].data_len = 3;
  leaves[2].kind = BP__WAIT_EVENT;
  leaves[2].event_id = (bp_id){9, 9};
  bp__wait any = {.kind = BP__WAIT_ANY, .children = leaves + 1, .n_children = 2};
  bp__wait all_children[2] = {leaves[0], any};
  bp__wait all = {.kind = BP__WAIT_ALL, .children = all_children, .n_children = 2};
  bp__buf b, again;
  bp__buf_init(&b);
  bp__buf_init(&again);
  bp__wait_encode(&b, &all);
  bp__wait d;
  assert_ok(bp__wait_decode(b.data, b.len, &d));
  assert_int_equal(d.kind, BP__WAIT_ALL);
  assert_int_equal(d.n_children, 2);
  assert_int_equal(d.children[0].resume_at_ms, 1767225600000ull);
  assert_int_equal(d.children[1].children[0].tag, 513);
  assert_memory_equal(d.children[1].children[0].data, data, 3);
  bp__wait_encode(&again, &d);
  tu_assert_bytes_eq(again.data, again.len, b.data, b.len, "wait re-encoded");
  bp__wait_free(&d);
  bp__buf_free(&b);
  bp__buf_free(&again);
}

static void wait_condition_rejects_unknown_variant_and_deep_nesting(void **state) {
  (void)state;
  bp__buf b;
  bp__buf_init(&b);
  bp__mp_put_map(&b, 1);
  bp__mp_put_cstr(&b, "Sometime");
  bp__mp_put_nil(&b);
  bp__wait d;
  assert_status(bp__wait_decode(b.data, b.len, &d), BP_ESERIAL);
  assert_non_null(strstr(bp_last_error()->message, "Sometime"));
  b.len = 0;
  for (int i = 0; i < 200; i++) {
    bp__mp_put_map(&b, 1);
    bp__mp_put_cstr(&b, "All");
    bp__mp_put_array(&b, 1);
  }
  assert_status(bp__wait_decode(b.data, b.len, &d), BP_ESERIAL);
  bp__buf_free(&b);
}

static void compensation_variants_round_trip(void **state) {
  (void)state;
  bp_id ids[3] = {{1, 2}, {3, 4}, {5, 6}};
  uint8_t data[] = {0xde, 0xad};
  bp__compensation cases[3] = {
      {.kind = BP__COMP_NOTIFY, .target_id = {7, 8}, .text = "stock low"},
      {.kind = BP__COMP_RELEASE, .ids = ids, .n_ids = 3},
      {.kind = BP__COMP_CUSTOM, .text = "refund", .data = data, .data_len = 2},
  };
  for (int i = 0; i < 3; i++) {
    bp__buf b, again;
    bp__buf_init(&b);
    bp__buf_init(&again);
    bp__compensation_encode(&b, &cases[i]);
    bp__compensation d;
    assert_ok(bp__compensation_decode(b.data, b.len, &d));
    assert_int_equal(d.kind, cases[i].kind);
    bp__compensation_encode(&again, &d);
    tu_assert_bytes_eq(again.data, again.len, b.data, b.len, "compensation re-encoded");
    bp__compensation_free(&d);
    bp__buf_free(&b);
    bp__buf_free(&again);
  }
}

static void committed_rejects_missing_fields(void **state) {
  (void)state;
  bp__buf b;
  bp__buf_init(&b);
  bp__mp_put_map(&b, 1);
  bp__mp_put_cstr(&b, "payload");
  bp__mp_put_nil(&b);
  bp__committed c;
  assert_status(bp__committed_decode(b.data, b.len, &c), BP_ESERIAL);
  assert_non_null(strstr(bp_last_error()->message, "event_id"));
  bp__buf_free(&b);
}

/* The folded CRC equals zlib's for every length up to 2 KiB at every
 * alignment, and for a large buffer, by each code path this processor can
 * run: 256-bit folds (VPCLMULQDQ), 128-bit folds (PCLMULQDQ), zlib alone. */
static void crc32_matches_zlib_at_every_length_and_alignment(void **state) {
  (void)state;
  size_t big = 1u << 20;
  uint8_t *buf = malloc(big + 64);
  assert_non_null(buf);
  uint32_t x = 0x12345678;
  for (size_t i = 0; i < big + 64; i++) {
    x = x * 1103515245u + 12345u;
    buf[i] = (uint8_t)(x >> 16);
  }
  const unsigned paths[] = {~0u, BP__CPU_CLMUL, 0};
  for (size_t k = 0; k < 3; k++) {
    unsigned cpu = paths[k];
    for (size_t align = 0; align < 16; align++)
      for (size_t len = 0; len <= 2048; len++) {
        uint32_t want = (uint32_t)crc32(0, buf + align, (uInt)len);
        uint32_t got = bp__crc32_update_using(cpu, 0, buf + align, len);
        if (got != want)
          fail_msg("features %#x, length %zu at alignment %zu: %08x, zlib %08x", cpu, len, align, got, want);
      }
    assert_int_equal(bp__crc32_update_using(cpu, 0, buf + 3, big), (uint32_t)crc32(0, buf + 3, (uInt)big));
    /* Continued in pieces of every size, it is the same CRC. */
    for (size_t cut = 0; cut < 300; cut++)
      assert_int_equal(bp__crc32_update_using(cpu, bp__crc32_update_using(cpu, 0, buf, cut), buf + cut, 4096 - cut),
                       (uint32_t)crc32(0, buf, 4096));
  }
  memset(buf, 0xff, 4096);
  assert_int_equal(bp__crc32(buf, 4096), (uint32_t)crc32(0, buf, 4096));
  free(buf);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(frame_round_trips_with_causation_and_chain),
      cmocka_unit_test(crc32_matches_zlib_at_every_length_and_alignment),
      cmocka_unit_test(frame_decoder_accepts_any_valid_shape),
      cmocka_unit_test(frame_body_truncated_anywhere_is_rejected),
      cmocka_unit_test(frame_with_trailing_bytes_is_rejected),
      cmocka_unit_test(frame_with_wrong_payload_size_is_rejected),
      cmocka_unit_test(frame_missing_or_duplicate_field_is_rejected),
      cmocka_unit_test(frame_with_wrong_types_is_rejected),
      cmocka_unit_test(fast_and_general_frame_decoders_agree_on_damaged_bodies),
      cmocka_unit_test(frame_from_parts_is_byte_identical_to_the_one_pass_encoding),
      cmocka_unit_test(segment_header_rejects_bad_magic_version_and_length),
      cmocka_unit_test(segment_header_with_a_missing_field_names_it_once),
      cmocka_unit_test(wait_condition_trees_round_trip),
      cmocka_unit_test(wait_condition_rejects_unknown_variant_and_deep_nesting),
      cmocka_unit_test(compensation_variants_round_trip),
      cmocka_unit_test(committed_rejects_missing_fields),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
