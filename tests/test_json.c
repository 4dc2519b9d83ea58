/* test_json.c - JSON text <-> MessagePack payload conversion. */
#include "testutil.h"

#include <json-c/json.h>

static void json_to_hex(const char *json, const char *want_hex) {
  uint8_t *mp;
  size_t n;
  assert_ok(bp_json_to_msgpack(json, strlen(json), &mp, &n));
  size_t wn;
  uint8_t *want = tu_from_hex(want_hex, &wn);
  tu_assert_bytes_eq(mp, n, want, wn, json);
  free(want);
  bp_free(mp);
}

static void round_trip(const char *json, const char *want_json) {
  uint8_t *mp;
  size_t n;
  assert_ok(bp_json_to_msgpack(json, strlen(json), &mp, &n));
  char *back;
  assert_ok(bp_msgpack_to_json(mp, n, &back));
  if (strcmp(back, want_json) != 0) fail_msg("round trip of %s gave %s, expected %s", json, back, want_json);
  bp_free(back);
  bp_free(mp);
}

/* Every payload of the basic fixture, converted from its JSON, gives the
 * exact MessagePack bytes the Rust crate stored. */
static void fixture_payloads_convert_to_the_crate_bytes(void **state) {
  (void)state;
  struct json_object *m = tu_manifest("basic");
  struct json_object *events = tu_field(m, "events");
  for (size_t i = 0; i < json_object_array_length(events); i++) {
    struct json_object *e = json_object_array_get_idx(events, i);
    const char *text = json_object_to_json_string_ext(tu_field(e, "payload"), JSON_C_TO_STRING_PLAIN);
    json_to_hex(text, tu_str(e, "payload_msgpack_hex"));
  }
  json_object_put(m);
}

static void integers_keep_their_exact_64_bit_value(void **state) {
  (void)state;
  json_to_hex("18446744073709551615", "cfffffffffffffffff");
  json_to_hex("-9223372036854775808", "d38000000000000000");
  json_to_hex("9223372036854775807", "cf7fffffffffffffff");
  json_to_hex("-1", "ff");
  json_to_hex("[0,127,128,-33]", "94007fcc80d0df");
  round_trip("[18446744073709551615,-9223372036854775808,0]", "[18446744073709551615,-9223372036854775808,0]");
}

static void floats_unicode_and_nesting_survive(void **state) {
  (void)state;
  json_to_hex("1.5", "cb3ff8000000000000");
  round_trip("[0.1,1.5,-2.0,1e+300,3.0]", "[0.1,1.5,-2.0,1e+300,3.0]");
  json_to_hex("\"\\u00e9\"", "a2c3a9");
  json_to_hex("\"\\ud83d\\ude00\"", "a4f09f9880"); /* a surrogate pair */
  round_trip("{\"name\":\"caf\\u00e9 \\ud83d\\ude00\",\"nested\":{\"a\":[1,[2,[3]]],\"b\":null,\"c\":true}}",
             "{\"name\":\"café 😀\",\"nested\":{\"a\":[1,[2,[3]]],\"b\":null,\"c\":true}}");
  round_trip("{\"z\":1,\"a\":2}", "{\"z\":1,\"a\":2}"); /* key order is kept */
  round_trip("\"quote \\\" backslash \\\\ newline \\n\"", "\"quote \\\" backslash \\\\ newline \\n\"");
  round_trip("{}", "{}");
  round_trip("[]", "[]");
}

static void malformed_json_is_rejected_with_a_position(void **state) {
  (void)state;
  const char *bad[] = {"", "{", "[1,2", "{\"a\":}", "tru", "[1,]", "{'a':1}", "01x", "[1] [2]",
                       "\"unterminated", "\"bad utf8 \xff\"", "NaN"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    uint8_t *mp = (uint8_t *)"sentinel";
    size_t n;
    bp_status st = bp_json_to_msgpack(bad[i], strlen(bad[i]), &mp, &n);
    if (st != BP_EJSON) fail_msg("\"%s\" gave %s, expected BP_EJSON", bad[i], bp_status_name(st));
    assert_null(mp);
  }
  uint8_t *mp;
  size_t n;
  assert_status(bp_json_to_msgpack("{\n  \"a\": ]\n}", 12, &mp, &n), BP_EJSON);
  assert_non_null(strstr(bp_last_error()->message, "line 2"));
}

static void json_nesting_deeper_than_the_limit_is_rejected(void **state) {
  (void)state;
  size_t depth = BP_JSON_MAX_DEPTH + 10;
  char *text = malloc(depth * 2 + 1);
  memset(text, '[', depth);
  memset(text + depth, ']', depth);
  text[depth * 2] = '\0';
  uint8_t *mp;
  size_t n;
  assert_status(bp_json_to_msgpack(text, depth * 2, &mp, &n), BP_ELIMIT);
  free(text);
}

static void msgpack_to_json_renders_bin_ext_and_non_string_keys(void **state) {
  (void)state;
  size_t n;
  uint8_t *mp = tu_from_hex("83" "01" "a178" "c4020aff" "a165" "c0" "ca3fc00000", &n);
  /* {1: "x", bin [10, 255]: "e", nil: 1.5f} */
  char *json;
  assert_ok(bp_msgpack_to_json(mp, n, &json));
  assert_string_equal(json, "{\"1\":\"x\",\"[10,255]\":\"e\",\"null\":1.5}");
  bp_free(json);
  free(mp);
  mp = tu_from_hex("d5070102", &n);
  assert_ok(bp_msgpack_to_json(mp, n, &json));
  assert_string_equal(json, "{\"ext_type\":7,\"data\":[1,2]}");
  bp_free(json);
  free(mp);
}

static void malformed_msgpack_is_rejected(void **state) {
  (void)state;
  const char *bad[] = {"", "c1", "92 01", "a5 6162", "dc ffff", "01 02", "cb 3ff0"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    size_t n;
    uint8_t *mp = tu_from_hex(bad[i], &n);
    char *json = (char *)"sentinel";
    bp_status st = bp_msgpack_to_json(mp, n, &json);
    if (st != BP_ESERIAL) fail_msg("\"%s\" gave %s, expected BP_ESERIAL", bad[i], bp_status_name(st));
    assert_null(json);
    free(mp);
  }
}

static void msgpack_nesting_deeper_than_the_limit_is_rejected(void **state) {
  (void)state;
  size_t depth = BP_JSON_MAX_DEPTH + 10;
  uint8_t *mp = malloc(depth + 1);
  memset(mp, 0x91, depth);
  mp[depth] = 0xc0;
  char *json;
  assert_status(bp_msgpack_to_json(mp, depth + 1, &json), BP_ELIMIT);
  free(mp);
}

/* Found by fuzz_msgpack: map keys that are maps, nested, are escaped again at
 * every level, so their JSON text doubles per level. It must fail, not grow. */
static void nested_non_string_keys_are_bounded(void **state) {
  (void)state;
  size_t depth = 40;
  uint8_t *mp = malloc(2 * depth + 2);
  size_t n = 0;
  for (size_t i = 0; i < depth; i++) mp[n++] = 0x81;
  mp[n++] = 0xa1;
  mp[n++] = 'a';
  for (size_t i = 0; i < depth; i++) mp[n++] = 0xc0;
  char *json;
  assert_status(bp_msgpack_to_json(mp, n, &json), BP_ELIMIT);
  free(mp);
}

/* JSON that json-c would quietly turn into another value is refused: an
 * integer past 64 bits (clamped), a lone surrogate escape (replaced by
 * U+FFFD), bytes that are not strict UTF-8, raw control characters. */
static void json_that_would_change_value_is_ejson(void **state) {
  (void)state;
  const char *bad[] = {
      "18446744073709551616",          /* 2^64 */
      "-9223372036854775809",          /* below INT64_MIN */
      "[1, 99999999999999999999999]",  /* inside an array */
      "{\"a\": -99999999999999999999}",
      "\"\\ud800\"",                  /* a lone high surrogate */
      "\"\\udc00\"",                  /* a lone low surrogate */
      "\"\\ud800\\u0041\"",           /* high surrogate, then not a low one */
      "{\"\\ud83d\": 1}",             /* in a key */
      "\"\xc0\xaf\"",                 /* overlong '/' */
      "\"\xed\xa0\x80\"",             /* a surrogate in UTF-8 */
      "\"\xf4\x90\x80\x80\"",         /* above U+10FFFF */
      "\"tab\there\"",                 /* a raw control character */
      "\"nul\x01\"",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    uint8_t *mp = (uint8_t *)"sentinel";
    size_t n;
    bp_status st = bp_json_to_msgpack(bad[i], strlen(bad[i]), &mp, &n);
    if (st != BP_EJSON) fail_msg("case %zu (%s) gave %s, expected BP_EJSON", i, bad[i], bp_status_name(st));
    assert_null(mp);
  }
  /* Their lawful neighbours still convert, to the exact value. */
  json_to_hex("18446744073709551615", "cfffffffffffffffff");
  json_to_hex("-9223372036854775808", "d38000000000000000");
  json_to_hex("\"\\ud83d\\ude00\"", "a4f09f9880");
  json_to_hex("\"\\u0000\"", "a100");
  json_to_hex("\"\xf4\x8f\xbf\xbf\"", "a4f48fbfbf");
}

/* A MessagePack str whose bytes are not UTF-8 has no JSON form: converting
 * it fails BP_ESERIAL instead of writing invalid JSON. */
static void msgpack_str_that_is_not_utf8_is_refused_not_written(void **state) {
  (void)state;
  const char *cases[] = {"a1ff", "a2c0af", "a3eda080", "81a1ff01", "91a2c328"};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    size_t n;
    uint8_t *mp = tu_from_hex(cases[i], &n);
    char *json = (char *)"sentinel";
    bp_status st = bp_msgpack_to_json(mp, n, &json);
    if (st != BP_ESERIAL) fail_msg("%s gave %s, expected BP_ESERIAL", cases[i], bp_status_name(st));
    assert_null(json);
    assert_non_null(strstr(bp_last_error()->message, "not UTF-8"));
    free(mp);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(fixture_payloads_convert_to_the_crate_bytes),
      cmocka_unit_test(integers_keep_their_exact_64_bit_value),
      cmocka_unit_test(floats_unicode_and_nesting_survive),
      cmocka_unit_test(malformed_json_is_rejected_with_a_position),
      cmocka_unit_test(json_nesting_deeper_than_the_limit_is_rejected),
      cmocka_unit_test(msgpack_to_json_renders_bin_ext_and_non_string_keys),
      cmocka_unit_test(malformed_msgpack_is_rejected),
      cmocka_unit_test(msgpack_nesting_deeper_than_the_limit_is_rejected),
      cmocka_unit_test(nested_non_string_keys_are_bounded),
      cmocka_unit_test(json_that_would_change_value_is_ejson),
      cmocka_unit_test(msgpack_str_that_is_not_utf8_is_refused_not_written),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
