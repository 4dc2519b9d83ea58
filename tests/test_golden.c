/* test_golden.c - the records encode to exactly the Rust crate's golden bytes
 * (tests/data/golden) and decode back to the same values. */
#include "testutil.h"
#include "wire/records.h"

static uint8_t *golden(const char *name, size_t *len) {
  char rel[256];
  snprintf(rel, sizeof rel, "golden/%s", name);
  size_t n;
  char *text = (char *)tu_read_data(rel, &n);
  uint8_t *bytes = tu_from_hex(text, len);
  free(text);
  return bytes;
}

static const bp_id ID_0123 = {0x0123456789ABCDEFull, 0x0123456789ABCDEFull};

static void coordinate_matches_golden(void **state) {
  (void)state;
  size_t n;
  uint8_t *want = golden("coordinate_v1.hex", &n);
  bp__buf b;
  bp__buf_init(&b);
  bp__coord_encode(&b, "entity:test", 11, "scope:test", 10);
  tu_assert_bytes_eq(b.data, b.len, want, n, "coordinate");
  const char *e, *s;
  size_t el, sl;
  assert_ok(bp__coord_decode(want, n, &e, &el, &s, &sl));
  assert_int_equal(el, 11);
  assert_memory_equal(e, "entity:test", 11);
  assert_int_equal(sl, 10);
  assert_memory_equal(s, "scope:test", 10);
  bp__buf_free(&b);
  free(want);
}

/* The golden header is the "header" map of a frame: encode a frame around it
 * and cut the header's bytes out. */
static void event_header_matches_golden(void **state) {
  (void)state;
  size_t n;
  uint8_t *want = golden("event_header_v1.hex", &n);
  bp__frame f;
  memset(&f, 0, sizeof f);
  f.header.event_id = ID_0123;
  f.header.correlation_id = ID_0123;
  f.header.timestamp_us = 1700000000000000;
  f.header.position = bp_position_root();
  f.header.payload_size = 42;
  assert_ok(bp_kind_custom(0xF, 1, &f.header.kind));
  f.entity = "e";
  f.entity_len = 1;
  f.scope = "s";
  f.scope_len = 1;
  bp__buf b;
  bp__buf_init(&b);
  bp__frame_encode_body(&b, &f);
  /* body = 83 a5"event" 83 a6"header" <header...> */
  const size_t header_at = 1 + 6 + 1 + 7;
  assert_true(b.len > header_at + n);
  tu_assert_bytes_eq(b.data + header_at, n, want, n, "event header");
  bp__buf_free(&b);
  free(want);
}

static void committed_matches_golden(void **state) {
  (void)state;
  size_t n;
  uint8_t *want = golden("committed_v1.hex", &n);
  bp__committed c;
  memset(&c, 0, sizeof c);
  const uint8_t payload[] = "\xac" "test_payload";
  c.payload = payload;
  c.payload_len = 13;
  c.event_id = ID_0123;
  c.sequence = 42;
  memset(c.hash, 0xAB, 32);
  bp__buf b;
  bp__buf_init(&b);
  bp__committed_encode(&b, &c);
  tu_assert_bytes_eq(b.data, b.len, want, n, "committed");
  bp__committed d;
  assert_ok(bp__committed_decode(want, n, &d));
  tu_assert_bytes_eq(d.payload, d.payload_len, payload, 13, "committed payload");
  assert_true(bp_id_eq(d.event_id, ID_0123));
  assert_int_equal(d.sequence, 42);
  assert_memory_equal(d.hash, c.hash, 32);
  bp__buf_free(&b);
  free(want);
}

static void wait_condition_matches_golden(void **state) {
  (void)state;
  size_t n;
  uint8_t *want = golden("wait_condition_v1.hex", &n);
  bp__wait w;
  memset(&w, 0, sizeof w);
  w.kind = BP__WAIT_EVENT;
  w.event_id = (bp_id){0xDEADBEEFCAFEBABEull, 0x1234567890ABCDEFull};
  bp__buf b;
  bp__buf_init(&b);
  bp__wait_encode(&b, &w);
  tu_assert_bytes_eq(b.data, b.len, want, n, "wait condition");
  bp__wait d;
  assert_ok(bp__wait_decode(want, n, &d));
  assert_int_equal(d.kind, BP__WAIT_EVENT);
  assert_true(bp_id_eq(d.event_id, w.event_id));
  bp__wait_free(&d);
  bp__buf_free(&b);
  free(want);
}

static void compensation_action_matches_golden(void **state) {
  (void)state;
  size_t n;
  uint8_t *want = golden("compensation_action_v1.hex", &n);
  bp_id ids[2] = {{0x1111111111111111ull, 0x2222222222222222ull},
                  {0x3333333333333333ull, 0x4444444444444444ull}};
  bp__compensation c;
  memset(&c, 0, sizeof c);
  c.kind = BP__COMP_ROLLBACK;
  c.ids = ids;
  c.n_ids = 2;
  bp__buf b;
  bp__buf_init(&b);
  bp__compensation_encode(&b, &c);
  tu_assert_bytes_eq(b.data, b.len, want, n, "compensation action");
  bp__compensation d;
  assert_ok(bp__compensation_decode(want, n, &d));
  assert_int_equal(d.kind, BP__COMP_ROLLBACK);
  assert_int_equal(d.n_ids, 2);
  assert_true(bp_id_eq(d.ids[0], ids[0]));
  assert_true(bp_id_eq(d.ids[1], ids[1]));
  bp__compensation_free(&d);
  bp__buf_free(&b);
  free(want);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(coordinate_matches_golden),
      cmocka_unit_test(event_header_matches_golden),
      cmocka_unit_test(committed_matches_golden),
      cmocka_unit_test(wait_condition_matches_golden),
      cmocka_unit_test(compensation_action_matches_golden),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
