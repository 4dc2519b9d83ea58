/*
 * test_fixture_frames.c - every frame the Rust crate wrote into the fixture
 * stores decodes to exactly the manifest's values, and re-encodes to the same
 * bytes.
 */
#include "testutil.h"
#include "wire/records.h"

#include <json-c/json.h>

static void check_fixture(const char *name) {
  struct json_object *m = tu_manifest(name);
  struct json_object *events = tu_field(m, "events");
  struct json_object *trunc = NULL;
  bp_id torn_id = BP_ID_NIL;
  if (json_object_object_get_ex(m, "truncation", &trunc)) torn_id = tu_id(trunc, "torn_event_id");

  size_t n = json_object_array_length(events);
  assert_int_equal(n, tu_u64(m, "event_count"));
  bp__buf scratch, out;
  bp__buf_init(&scratch);
  bp__buf_init(&out);
  int checked = 0, torn = 0;

  for (size_t i = 0; i < n; i++) {
    struct json_object *e = json_object_array_get_idx(events, i);
    struct json_object *pos = tu_field(e, "disk_pos");
    char file[32], path[4096];
    snprintf(file, sizeof file, "%06llu.fbat", (unsigned long long)tu_u64(pos, "segment_id"));
    size_t seg_len;
    uint8_t *seg = tu_read_file(tu_fixture_path(name, file, path, sizeof path), &seg_len);
    assert_non_null(seg);
    uint64_t off = tu_u64(pos, "offset"), len = tu_u64(pos, "length");
    bp_id id = tu_id(e, "event_id");

    if (off + len > seg_len) {
      /* Only the torn fixture's torn frame may run past the end of its file. */
      assert_true(bp_id_eq(id, torn_id));
      torn++;
      free(seg);
      continue;
    }
    const uint8_t *frame = seg + off;
    assert_int_equal(bp__get_be32(frame), len - 8);
    assert_int_equal(bp__get_be32(frame + 4), tu_u64(e, "frame_crc32"));
    assert_int_equal(bp__crc32(frame + 8, len - 8), tu_u64(e, "frame_crc32"));

    bp__frame f;
    assert_ok(bp__frame_decode_body(frame + 8, len - 8, &scratch, &f));
    const bp_header *h = &f.header;
    assert_true(bp_id_eq(h->event_id, id));
    assert_true(bp_id_eq(h->correlation_id, tu_id(e, "correlation_id")));
    assert_true(bp_id_eq(h->causation_id, tu_id(e, "causation_id")));
    assert_int_equal(h->timestamp_us, (int64_t)tu_u64(e, "timestamp_us"));
    struct json_object *p = tu_field(e, "position");
    assert_int_equal(h->position.wall_ms, tu_u64(p, "wall_ms"));
    assert_int_equal(h->position.counter, tu_u64(p, "counter"));
    assert_int_equal(h->position.depth, tu_u64(p, "depth"));
    assert_int_equal(h->position.lane, tu_u64(p, "lane"));
    assert_int_equal(h->position.sequence, tu_u64(e, "clock"));
    assert_int_equal(h->payload_size, tu_u64(e, "payload_size"));
    assert_int_equal(h->kind, tu_u64(e, "kind"));
    assert_int_equal(h->flags, tu_u64(e, "flags"));
    uint8_t hash[32];
    tu_hash(e, "content_hash", hash);
    assert_memory_equal(h->content_hash, hash, 32);
    assert_true(f.has_chain);
    tu_hash(e, "prev_hash", hash);
    assert_memory_equal(f.chain.prev_hash, hash, 32);
    tu_hash(e, "event_hash", hash);
    assert_memory_equal(f.chain.event_hash, hash, 32);
    assert_int_equal(f.entity_len, strlen(tu_str(e, "entity")));
    assert_memory_equal(f.entity, tu_str(e, "entity"), f.entity_len);
    assert_int_equal(f.scope_len, strlen(tu_str(e, "scope")));
    assert_memory_equal(f.scope, tu_str(e, "scope"), f.scope_len);
    size_t plen;
    uint8_t *payload = tu_from_hex(tu_str(e, "payload_msgpack_hex"), &plen);
    tu_assert_bytes_eq(f.payload, f.payload_len, payload, plen, "payload");
    /* The content hash really is BLAKE3 of the payload. */
    bp_compute_hash(f.payload, f.payload_len, hash);
    assert_memory_equal(hash, h->content_hash, 32);

    out.len = 0;
    assert_ok(bp__frame_encode(&out, &f));
    char what[64];
    snprintf(what, sizeof what, "%s step %zu re-encoded frame", name, i);
    tu_assert_bytes_eq(out.data, out.len, frame, len, what);
    checked++;
    free(payload);
    free(seg);
  }
  if (trunc) {
    assert_int_equal(torn, 1);
    assert_int_equal(checked, tu_u64(trunc, "events_expected_readable"));
  } else {
    assert_int_equal(torn, 0);
    assert_int_equal(checked, n);
  }
  bp__buf_free(&scratch);
  bp__buf_free(&out);
  json_object_put(m);
}

static void basic_fixture_frames_decode_and_reencode_exactly(void **state) {
  (void)state;
  check_fixture("basic");
}

static void crashed_fixture_frames_decode_and_reencode_exactly(void **state) {
  (void)state;
  check_fixture("crashed");
}

static void torn_fixture_frames_decode_except_the_torn_one(void **state) {
  (void)state;
  check_fixture("torn");
}

static void segment_headers_of_fixtures_decode_and_reencode(void **state) {
  (void)state;
  const char *names[] = {"basic", "crashed", "torn"};
  for (int k = 0; k < 3; k++) {
    for (int id = 1; id <= 10; id++) {
      char file[32], path[4096];
      snprintf(file, sizeof file, "%06d.fbat", id);
      size_t len;
      uint8_t *seg = tu_read_file(tu_fixture_path(names[k], file, path, sizeof path), &len);
      assert_non_null(seg);
      bp__segment_header h;
      size_t consumed;
      assert_ok(bp__segment_header_decode(seg, len, &h, &consumed));
      assert_int_equal(consumed, 57);
      assert_int_equal(h.segment_id, id);
      assert_int_equal(h.version, 1);
      bp__buf b;
      bp__buf_init(&b);
      bp__segment_header_encode(&b, &h);
      tu_assert_bytes_eq(b.data, b.len, seg, consumed, "segment header");
      bp__buf_free(&b);
      free(seg);
    }
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(basic_fixture_frames_decode_and_reencode_exactly),
      cmocka_unit_test(crashed_fixture_frames_decode_and_reencode_exactly),
      cmocka_unit_test(torn_fixture_frames_decode_except_the_torn_one),
      cmocka_unit_test(segment_headers_of_fixtures_decode_and_reencode),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
