/* test_core.c - status codes, kinds, coordinates, regions, positions, headers. */
#include "testutil.h"
#include "internal.h"

#include <errno.h>

static void status_names_and_messages_are_stable(void **state) {
  (void)state;
  assert_int_equal(BP_OK, 0);
  assert_int_equal(BP_ECRC, 5);
  assert_int_equal(BP_EUNSUPPORTED, 22);
  assert_string_equal(bp_status_name(BP_OK), "BP_OK");
  assert_string_equal(bp_status_name(BP_ESEQUENCE), "BP_ESEQUENCE");
  assert_string_equal(bp_status_name(BP_EIDEMPOTENCY_REQUIRED), "BP_EIDEMPOTENCY_REQUIRED");
  assert_string_equal(bp_status_name((bp_status)999), "BP_E?");
  assert_int_equal(BP_EIDEMPOTENCY_CONFLICT, 23);
  assert_int_equal(BP_EBROKER, 26);
  assert_string_equal(bp_status_name(BP_EFENCED), "BP_EFENCED");
  for (int c = 0; c <= BP_EBROKER; c++) {
    assert_non_null(bp_strerror((bp_status)c));
    assert_true(strncmp(bp_status_name((bp_status)c), "BP_", 3) == 0);
  }
  assert_string_equal(bp_strerror((bp_status)-1), "unknown status code");
}

static void last_error_records_the_failure_on_this_thread(void **state) {
  (void)state;
  bp_kind k;
  assert_status(bp_kind_custom(0x0, 1, &k), BP_EINVAL);
  const bp_error *e = bp_last_error();
  assert_int_equal(e->code, BP_EINVAL);
  assert_non_null(strstr(e->message, "reserved"));
}

/* A failure's message may quote the previous failure's (how context is added
 * to a decoder's reason); both with and without an errno suffix. */
static void a_message_may_quote_the_last_one(void **state) {
  (void)state;
  bp__fail(BP_ESERIAL, "%s", "inner reason");
  assert_status(bp__fail(BP_ECORRUPT, "outer: %s", bp_last_error()->message), BP_ECORRUPT);
  assert_string_equal(bp_last_error()->message, "outer: inner reason");
  bp__fail(BP_ESERIAL, "%s", "inner reason");
  assert_status(bp__fail_errno(BP_EIO, ENOENT, "outer: %s", bp_last_error()->message), BP_EIO);
  char want[128];
  snprintf(want, sizeof want, "outer: inner reason: %s", strerror(ENOENT));
  assert_string_equal(bp_last_error()->message, want);
  assert_int_equal(bp_last_error()->sys_errno, ENOENT);
}

/* A buffer started on the caller's memory stays there while it fits, then
 * moves to the heap with its contents; freeing it never frees the caller's
 * memory (ASan would report that). */
static void buffer_on_caller_memory_moves_to_the_heap_when_it_grows(void **state) {
  (void)state;
  uint8_t mem[8];
  bp__buf b;
  bp__buf_init_on(&b, mem, sizeof mem);
  bp__buf_append(&b, "abcde", 5);
  assert_ptr_equal(b.data, mem);
  bp__buf_append(&b, "fghijklmno", 10);
  assert_ptr_not_equal(b.data, mem);
  assert_false(b.oom);
  tu_assert_bytes_eq(b.data, b.len, "abcdefghijklmno", 15, "contents after the move");
  bp__buf_free(&b);
  bp__buf_init_on(&b, mem, sizeof mem);
  bp__buf_append(&b, "xy", 2);
  bp__buf_free(&b);
  assert_null(b.data);
}

static void version_matches_the_header(void **state) {
  (void)state;
  assert_string_equal(bp_version(), BP_VERSION_STRING);
  assert_int_equal(bp_version_number(), BP_VERSION_NUMBER);
}

static void kind_custom_packs_category_and_type(void **state) {
  (void)state;
  bp_kind k;
  assert_ok(bp_kind_custom(0xF, 1, &k));
  assert_int_equal(k, 0xF001);
  assert_int_equal(bp_kind_category(k), 0xF);
  assert_int_equal(bp_kind_type_id(k), 1);
  assert_false(bp_kind_is_system(k));
  assert_false(bp_kind_is_effect(k));
  /* type_id keeps only its low 12 bits */
  assert_ok(bp_kind_custom(0x1, 0xFFFF, &k));
  assert_int_equal(k, 0x1FFF);
}

static void kind_custom_rejects_reserved_and_wide_categories(void **state) {
  (void)state;
  bp_kind k = 0x1234;
  assert_status(bp_kind_custom(0x0, 1, &k), BP_EINVAL);
  assert_status(bp_kind_custom(0xD, 1, &k), BP_EINVAL);
  assert_status(bp_kind_custom(16, 1, &k), BP_EINVAL);
  assert_status(bp_kind_custom(0xFF, 1, &k), BP_EINVAL);
  assert_int_equal(k, 0x1234); /* untouched on failure */
  for (uint8_t c = 1; c < 16; c++) {
    if (c == 0xD) continue;
    assert_ok(bp_kind_custom(c, 7, &k));
    assert_int_equal(bp_kind_category(k), c);
  }
}

static void kind_constants_have_the_crate_values(void **state) {
  (void)state;
  assert_int_equal(BP_KIND_DATA, 0x1000);
  assert_int_equal(BP_KIND_SYSTEM_INIT, 0x0001);
  assert_int_equal(BP_KIND_SYSTEM_SHUTDOWN, 0x0002);
  assert_int_equal(BP_KIND_SYSTEM_HEARTBEAT, 0x0003);
  assert_int_equal(BP_KIND_SYSTEM_CONFIG_CHANGE, 0x0004);
  assert_int_equal(BP_KIND_SYSTEM_CHECKPOINT, 0x0005);
  assert_int_equal(BP_KIND_EFFECT_ERROR, 0xD001);
  assert_int_equal(BP_KIND_EFFECT_RETRY, 0xD002);
  assert_int_equal(BP_KIND_EFFECT_ACK, 0xD004);
  assert_int_equal(BP_KIND_EFFECT_BACKPRESSURE, 0xD005);
  assert_int_equal(BP_KIND_EFFECT_CANCEL, 0xD006);
  assert_int_equal(BP_KIND_EFFECT_CONFLICT, 0xD007);
  assert_int_equal(BP_KIND_TOMBSTONE, 0x0FFE);
  assert_true(bp_kind_is_system(BP_KIND_SYSTEM_INIT));
  assert_true(bp_kind_is_system(BP_KIND_TOMBSTONE));
  assert_true(bp_kind_is_effect(BP_KIND_EFFECT_CONFLICT));
  assert_false(bp_kind_is_system(BP_KIND_DATA));
}

static void kind_displays_as_uppercase_hex(void **state) {
  (void)state;
  char buf[7];
  bp_kind_format(0xF001, buf);
  assert_string_equal(buf, "0xF001");
  bp_kind_format(0x0FFE, buf);
  assert_string_equal(buf, "0x0FFE");
  bp_kind_format(0xd00a, buf);
  assert_string_equal(buf, "0xD00A");
}

static void coord_validation_names_the_bad_part(void **state) {
  (void)state;
  bp_coord ok = {"user:1", "scope:alpha"};
  assert_ok(bp_coord_validate(&ok));
  bp_coord empty_entity = {"", "s"};
  assert_status(bp_coord_validate(&empty_entity), BP_ECOORD);
  assert_non_null(strstr(bp_last_error()->message, "entity"));
  bp_coord empty_scope = {"e", ""};
  assert_status(bp_coord_validate(&empty_scope), BP_ECOORD);
  assert_non_null(strstr(bp_last_error()->message, "scope"));
  bp_coord null_scope = {"e", NULL};
  assert_status(bp_coord_validate(&null_scope), BP_ECOORD);
  assert_status(bp_coord_validate(NULL), BP_ECOORD);

  char *big = malloc(BP_MAX_COORD_LEN + 2);
  memset(big, 'x', BP_MAX_COORD_LEN + 1);
  big[BP_MAX_COORD_LEN + 1] = '\0';
  bp_coord too_long = {big, "s"};
  assert_status(bp_coord_validate(&too_long), BP_ECOORD);
  assert_non_null(strstr(bp_last_error()->message, "longer"));
  big[BP_MAX_COORD_LEN] = '\0'; /* exactly the limit is fine */
  assert_ok(bp_coord_validate(&too_long));
  free(big);
}

static void region_entity_matches_by_prefix(void **state) {
  (void)state;
  bp_region r = bp_region_entity("user:1");
  assert_true(bp_region_matches_event(&r, "user:1", "s", 0x1001));
  assert_true(bp_region_matches_event(&r, "user:10", "s", 0x1001));
  assert_false(bp_region_matches_event(&r, "user:2", "s", 0x1001));
  assert_false(bp_region_matches_event(&r, "user:", "s", 0x1001));
  bp_region all = bp_region_all();
  assert_true(bp_region_matches_event(&all, "anything", "else", 0xFFFF));
}

static void region_builders_chain_scope_kind_category_and_clock(void **state) {
  (void)state;
  bp_region r = bp_region_with_kind(bp_region_with_scope(bp_region_entity("order:"), "scope:beta"), 0xF001);
  assert_true(bp_region_matches_event(&r, "order:42", "scope:beta", 0xF001));
  assert_false(bp_region_matches_event(&r, "order:42", "scope:alpha", 0xF001));
  assert_false(bp_region_matches_event(&r, "order:42", "scope:beta", 0xF002));

  bp_region c = bp_region_with_category(bp_region_scope("scope:beta"), 0xF);
  assert_true(bp_region_matches_event(&c, "x", "scope:beta", 0xF07A));
  assert_false(bp_region_matches_event(&c, "x", "scope:beta", 0x1001));
  assert_false(bp_region_matches_event(&c, "x", "scope:betamax", 0xF07A)); /* scope is exact */

  bp_region k = bp_region_with_clock_range(bp_region_all(), 2, 4);
  assert_true(bp_region_matches_event(&k, "e", "s", 1)); /* live matching ignores clocks */
  assert_false(bp_region_matches(&k, "e", "s", 1, 1));
  assert_true(bp_region_matches(&k, "e", "s", 1, 2));
  assert_true(bp_region_matches(&k, "e", "s", 1, 4));
  assert_false(bp_region_matches(&k, "e", "s", 1, 5));
}

static void position_constructors_follow_the_crate(void **state) {
  (void)state;
  bp_position root = bp_position_root();
  assert_true(bp_position_is_root(&root));
  bp_position c = bp_position_child(3);
  assert_int_equal(c.sequence, 3);
  assert_int_equal(c.depth, 0);
  assert_false(bp_position_is_root(&c));
  bp_position at = bp_position_child_at(5, 1767225600000ull, 2);
  assert_int_equal(at.wall_ms, 1767225600000ull);
  assert_int_equal(at.counter, 2);
  bp_position f = bp_position_fork(2, 7);
  assert_int_equal(f.depth, 3);
  assert_int_equal(f.lane, 7);
  assert_int_equal(f.sequence, 0);
  char buf[64];
  bp_position_format(&at, buf, sizeof buf);
  assert_string_equal(buf, "0:0:5@1767225600000.2");
}

static void position_order_is_partial_across_lanes_and_depths(void **state) {
  (void)state;
  bp_position a = bp_position_child(1), b = bp_position_child(4);
  int order = 99;
  assert_true(bp_position_is_ancestor_of(&a, &b));
  assert_false(bp_position_is_ancestor_of(&b, &a));
  assert_false(bp_position_is_ancestor_of(&a, &a));
  assert_true(bp_position_compare(&a, &b, &order));
  assert_int_equal(order, -1);
  assert_true(bp_position_compare(&b, &a, &order));
  assert_int_equal(order, 1);
  assert_true(bp_position_compare(&a, &a, &order));
  assert_int_equal(order, 0);

  bp_position lane1 = bp_position_fork(0, 1);
  bp_position deeper = bp_position_fork(0, 0);
  assert_false(bp_position_compare(&a, &lane1, &order));
  assert_false(bp_position_compare(&a, &deeper, &order));
  assert_false(bp_position_is_ancestor_of(&a, &lane1));
}

static void header_flags_and_age(void **state) {
  (void)state;
  bp_header h;
  memset(&h, 0, sizeof h);
  h.flags = BP_FLAG_REQUIRES_ACK | BP_FLAG_REPLAY;
  assert_true(bp_header_requires_ack(&h));
  assert_false(bp_header_is_transactional(&h));
  assert_true(bp_header_is_replay(&h));
  h.flags = BP_FLAG_TRANSACTIONAL;
  assert_true(bp_header_is_transactional(&h));
  h.timestamp_us = 1000;
  assert_int_equal(bp_header_age_us(&h, 1500), 500);
  assert_int_equal(bp_header_age_us(&h, 10), 0);
  h.timestamp_us = INT64_MIN;
  assert_true(bp_header_age_us(&h, INT64_MAX) == UINT64_MAX);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(status_names_and_messages_are_stable),
      cmocka_unit_test(last_error_records_the_failure_on_this_thread),
      cmocka_unit_test(a_message_may_quote_the_last_one),
      cmocka_unit_test(buffer_on_caller_memory_moves_to_the_heap_when_it_grows),
      cmocka_unit_test(version_matches_the_header),
      cmocka_unit_test(kind_custom_packs_category_and_type),
      cmocka_unit_test(kind_custom_rejects_reserved_and_wide_categories),
      cmocka_unit_test(kind_constants_have_the_crate_values),
      cmocka_unit_test(kind_displays_as_uppercase_hex),
      cmocka_unit_test(coord_validation_names_the_bad_part),
      cmocka_unit_test(region_entity_matches_by_prefix),
      cmocka_unit_test(region_builders_chain_scope_kind_category_and_clock),
      cmocka_unit_test(position_constructors_follow_the_crate),
      cmocka_unit_test(position_order_is_partial_across_lanes_and_depths),
      cmocka_unit_test(header_flags_and_age),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
