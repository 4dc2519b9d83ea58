/* test_msgpack.c - the MessagePack writer's forms and the reader's bounds. */
#include "testutil.h"
#include "wire/msgpack.h"

static void expect_hex(bp__buf *b, const char *hex, const char *what) {
  size_t n;
  uint8_t *want = tu_from_hex(hex, &n);
  tu_assert_bytes_eq(b->data, b->len, want, n, what);
  free(want);
  b->len = 0;
}

static void integers_take_their_smallest_form(void **state) {
  (void)state;
  bp__buf b;
  bp__buf_init(&b);
  bp__mp_put_uint(&b, 0); expect_hex(&b, "00", "0");
  bp__mp_put_uint(&b, 127); expect_hex(&b, "7f", "127");
  bp__mp_put_uint(&b, 128); expect_hex(&b, "cc80", "128");
  bp__mp_put_uint(&b, 255); expect_hex(&b, "ccff", "255");
  bp__mp_put_uint(&b, 256); expect_hex(&b, "cd0100", "256");
  bp__mp_put_uint(&b, 65535); expect_hex(&b, "cdffff", "65535");
  bp__mp_put_uint(&b, 65536); expect_hex(&b, "ce00010000", "65536");
  bp__mp_put_uint(&b, 4294967295u); expect_hex(&b, "ceffffffff", "u32 max");
  bp__mp_put_uint(&b, 4294967296ull); expect_hex(&b, "cf0000000100000000", "2^32");
  bp__mp_put_uint(&b, UINT64_MAX); expect_hex(&b, "cfffffffffffffffff", "u64 max");
  bp__mp_put_int(&b, 5); expect_hex(&b, "05", "+5 as unsigned");
  bp__mp_put_int(&b, 1700000000000000); expect_hex(&b, "cf00060a24181e4000", "i64 positive");
  bp__mp_put_int(&b, -1); expect_hex(&b, "ff", "-1");
  bp__mp_put_int(&b, -32); expect_hex(&b, "e0", "-32");
  bp__mp_put_int(&b, -33); expect_hex(&b, "d0df", "-33");
  bp__mp_put_int(&b, -128); expect_hex(&b, "d080", "-128");
  bp__mp_put_int(&b, -129); expect_hex(&b, "d1ff7f", "-129");
  bp__mp_put_int(&b, -32768); expect_hex(&b, "d18000", "-32768");
  bp__mp_put_int(&b, -32769); expect_hex(&b, "d2ffff7fff", "-32769");
  bp__mp_put_int(&b, INT32_MIN); expect_hex(&b, "d280000000", "i32 min");
  bp__mp_put_int(&b, (int64_t)INT32_MIN - 1); expect_hex(&b, "d3ffffffff7fffffff", "i32 min - 1");
  bp__mp_put_int(&b, INT64_MIN); expect_hex(&b, "d38000000000000000", "i64 min");
  bp__buf_free(&b);
}

static void lengths_take_their_smallest_form(void **state) {
  (void)state;
  bp__buf b;
  bp__buf_init(&b);
  char s[70000];
  memset(s, 'a', sizeof s);
  bp__mp_put_str(&b, s, 31); assert_int_equal(b.data[0], 0xbf); assert_int_equal(b.len, 32); b.len = 0;
  bp__mp_put_str(&b, s, 32); assert_int_equal(b.data[0], 0xd9); assert_int_equal(b.data[1], 32); b.len = 0;
  bp__mp_put_str(&b, s, 256); assert_int_equal(b.data[0], 0xda); b.len = 0;
  bp__mp_put_str(&b, s, 65536); assert_int_equal(b.data[0], 0xdb); b.len = 0;
  bp__mp_put_bin(&b, s, 3); expect_hex(&b, "c403616161", "bin8");
  bp__mp_put_bin(&b, s, 256); assert_int_equal(b.data[0], 0xc5); b.len = 0;
  bp__mp_put_array(&b, 15); expect_hex(&b, "9f", "fixarray");
  bp__mp_put_array(&b, 16); expect_hex(&b, "dc0010", "array16");
  bp__mp_put_array(&b, 65536); expect_hex(&b, "dd00010000", "array32");
  bp__mp_put_map(&b, 15); expect_hex(&b, "8f", "fixmap");
  bp__mp_put_map(&b, 16); expect_hex(&b, "de0010", "map16");
  bp__mp_put_map(&b, 70000); expect_hex(&b, "df00011170", "map32");
  const uint8_t bytes[] = {0, 0x7f, 0x80, 0xff};
  bp__mp_put_byte_array(&b, bytes, 4); expect_hex(&b, "94007fcc80ccff", "byte array");
  bp__mp_put_nil(&b); bp__mp_put_bool(&b, true); bp__mp_put_bool(&b, false);
  expect_hex(&b, "c0c3c2", "nil true false");
  bp__mp_put_f64(&b, 1.5); expect_hex(&b, "cb3ff8000000000000", "f64");
  bp__mp_put_f32(&b, 1.5f); expect_hex(&b, "ca3fc00000", "f32");
  bp__buf_free(&b);
}

static void reader_round_trips_every_form(void **state) {
  (void)state;
  bp__buf b;
  bp__buf_init(&b);
  uint64_t us[] = {0, 127, 128, 255, 256, 65535, 65536, 4294967295u, 4294967296ull, UINT64_MAX};
  int64_t is[] = {-1, -32, -33, -128, -129, -32768, -32769, INT32_MIN, (int64_t)INT32_MIN - 1, INT64_MIN};
  for (int i = 0; i < 10; i++) bp__mp_put_uint(&b, us[i]);
  for (int i = 0; i < 10; i++) bp__mp_put_int(&b, is[i]);
  bp__mp_put_str(&b, "hello", 5);
  bp__mp_put_f64(&b, -2.25);
  bp__mp_reader r;
  bp__mp_reader_init(&r, b.data, b.len);
  for (int i = 0; i < 10; i++) {
    uint64_t v;
    assert_ok(bp__mp_read_u64(&r, &v));
    assert_true(v == us[i]);
  }
  for (int i = 0; i < 10; i++) {
    int64_t v;
    assert_ok(bp__mp_read_i64(&r, &v));
    assert_true(v == is[i]);
  }
  const char *s;
  uint32_t sl;
  assert_ok(bp__mp_read_str(&r, &s, &sl));
  assert_int_equal(sl, 5);
  bp__mp_value v;
  assert_ok(bp__mp_next(&r, &v));
  assert_int_equal(v.type, BP__MP_FLOAT);
  assert_true(v.f == -2.25);
  assert_int_equal(bp__mp_remaining(&r), 0);
  bp__buf_free(&b);
}

static void typed_reads_reject_out_of_range_and_wrong_types(void **state) {
  (void)state;
  const uint8_t big[] = {0xcd, 0x01, 0x00}; /* 256 */
  bp__mp_reader r;
  uint8_t u8;
  bp__mp_reader_init(&r, big, sizeof big);
  assert_status(bp__mp_read_u8(&r, &u8), BP_ESERIAL);
  const uint8_t neg[] = {0xff};
  uint32_t u32;
  bp__mp_reader_init(&r, neg, 1);
  assert_status(bp__mp_read_u32(&r, &u32), BP_ESERIAL);
  const uint8_t str[] = {0xa1, 'x'};
  bp__mp_reader_init(&r, str, 2);
  assert_status(bp__mp_read_u32(&r, &u32), BP_ESERIAL);
  assert_non_null(strstr(bp_last_error()->message, "string"));
  const uint8_t huge[] = {0xcf, 0x80, 0, 0, 0, 0, 0, 0, 0};
  int64_t i64;
  bp__mp_reader_init(&r, huge, sizeof huge);
  assert_status(bp__mp_read_i64(&r, &i64), BP_ESERIAL);
  /* Signed forms holding non-negative values read as unsigned. */
  const uint8_t pos_signed[] = {0xd0, 0x05};
  bp__mp_reader_init(&r, pos_signed, 2);
  assert_ok(bp__mp_read_u8(&r, &u8));
  assert_int_equal(u8, 5);
}

static void reserved_type_byte_is_rejected(void **state) {
  (void)state;
  const uint8_t c1[] = {0xc1};
  bp__mp_reader r;
  bp__mp_value v;
  bp__mp_reader_init(&r, c1, 1);
  assert_status(bp__mp_next(&r, &v), BP_ESERIAL);
  assert_non_null(strstr(bp_last_error()->message, "0xc1"));
}

/* Every proper prefix of a valid document fails to skip as a whole, and never
 * reads outside the prefix (ASan checks the bound, the copy makes it exact). */
static void every_truncation_is_detected(void **state) {
  (void)state;
  bp__buf b;
  bp__buf_init(&b);
  bp__mp_put_map(&b, 3);
  bp__mp_put_cstr(&b, "a"); bp__mp_put_uint(&b, 1ull << 40);
  bp__mp_put_cstr(&b, "long key that takes str8 form....."); bp__mp_put_bin(&b, "xyz", 3);
  bp__mp_put_cstr(&b, "c"); bp__mp_put_array(&b, 2); bp__mp_put_f64(&b, 3.5); bp__mp_put_int(&b, -300);
  for (size_t cut = 0; cut < b.len; cut++) {
    uint8_t *copy = malloc(cut ? cut : 1);
    memcpy(copy, b.data, cut);
    bp__mp_reader r;
    bp__mp_reader_init(&r, copy, cut);
    if (bp__mp_skip(&r) != BP_ESERIAL) fail_msg("prefix of %zu bytes was accepted", cut);
    free(copy);
  }
  bp__mp_reader r;
  bp__mp_reader_init(&r, b.data, b.len);
  assert_ok(bp__mp_skip(&r));
  assert_int_equal(bp__mp_remaining(&r), 0);
  bp__buf_free(&b);
}

static void container_counts_larger_than_the_input_are_rejected(void **state) {
  (void)state;
  const uint8_t arr[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0x01};  /* 4G items, one byte */
  bp__mp_reader r;
  bp__mp_reader_init(&r, arr, sizeof arr);
  assert_status(bp__mp_skip(&r), BP_ESERIAL);
  const uint8_t map[] = {0xdf, 0x7f, 0xff, 0xff, 0xff};
  bp__mp_reader_init(&r, map, sizeof map);
  assert_status(bp__mp_skip(&r), BP_ESERIAL);
  const uint8_t bytes[] = {0xdc, 0x00, 0x05, 1, 2};           /* 5 bytes claimed, 2 present */
  const uint8_t *p;
  size_t n;
  bp__buf scratch;
  bp__buf_init(&scratch);
  bp__mp_reader_init(&r, bytes, sizeof bytes);
  assert_status(bp__mp_read_bytes(&r, &scratch, &p, &n), BP_ESERIAL);
  bp__buf_free(&scratch);
}

static void byte_arrays_read_from_bin_or_integer_arrays(void **state) {
  (void)state;
  uint8_t out[4];
  const uint8_t as_array[] = {0x94, 0x01, 0xcc, 0x80, 0xd0, 0x05, 0xcd, 0x00, 0xff};
  bp__mp_reader r;
  bp__mp_reader_init(&r, as_array, sizeof as_array);
  assert_ok(bp__mp_read_fixed_bytes(&r, out, 4));
  assert_memory_equal(out, "\x01\x80\x05\xff", 4);
  const uint8_t as_bin[] = {0xc4, 0x04, 9, 8, 7, 6};
  bp__mp_reader_init(&r, as_bin, sizeof as_bin);
  assert_ok(bp__mp_read_fixed_bytes(&r, out, 4));
  assert_memory_equal(out, "\x09\x08\x07\x06", 4);
  const uint8_t wrong_len[] = {0x93, 1, 2, 3};
  bp__mp_reader_init(&r, wrong_len, sizeof wrong_len);
  assert_status(bp__mp_read_fixed_bytes(&r, out, 4), BP_ESERIAL);
  const uint8_t over_255[] = {0x92, 0x01, 0xcd, 0x01, 0x00};
  bp__mp_reader_init(&r, over_255, sizeof over_255);
  assert_status(bp__mp_read_fixed_bytes(&r, out, 2), BP_ESERIAL);
}

/* Integer arrays of bytes decode to the same bytes whatever their length and
 * content (the 8-bytes-at-a-time path and the element-by-element one), also
 * when some elements take another integer form, and a bad element anywhere is
 * refused. */
static void integer_byte_arrays_decode_exactly(void **state) {
  (void)state;
  uint32_t x = 99;
  uint8_t want[300], got[300];
  for (int round = 0; round < 3000; round++) {
    size_t n = (size_t)(round % 300);
    for (size_t i = 0; i < n; i++) {
      x = x * 1664525u + 1013904223u;
      /* Mostly random bytes, sometimes runs of 0xcc and of small values. */
      want[i] = round % 7 == 0 ? 0xcc : round % 5 == 0 ? (uint8_t)(x >> 28) : (uint8_t)(x >> 24);
    }
    bp__buf b;
    bp__buf_init(&b);
    bp__mp_put_byte_array(&b, want, n);
    bp__mp_reader r;
    bp__mp_reader_init(&r, b.data, b.len);
    const uint8_t *ptr;
    size_t len;
    bp__buf scratch;
    bp__buf_init(&scratch);
    assert_ok(bp__mp_read_bytes(&r, &scratch, &ptr, &len));
    tu_assert_bytes_eq(ptr, len, want, n, "decoded bytes");
    assert_int_equal(bp__mp_remaining(&r), 0);
    if (n == 32) {
      bp__mp_reader_init(&r, b.data, b.len);
      assert_ok(bp__mp_read_fixed_bytes(&r, got, 32));
      tu_assert_bytes_eq(got, 32, want, 32, "fixed bytes");
    }
    if (n >= 20) {
      /* One element rewritten as uint16 (cd 00 xx): still the same bytes. */
      bp__buf c;
      bp__buf_init(&c);
      size_t at = (size_t)(x % (n - 1)), off = b.len - 1; /* find element `at` */
      const uint8_t *q = b.data + (b.data[0] == 0xdc ? 3 : b.data[0] == 0xdd ? 5 : 1);
      for (size_t i = 0; i < at; i++) q += *q == 0xcc ? 2 : 1;
      off = (size_t)(q - b.data);
      size_t elen = *q == 0xcc ? 2 : 1;
      bp__buf_append(&c, b.data, off);
      uint8_t wide[3] = {0xcd, 0x00, want[at]};
      bp__buf_append(&c, wide, 3);
      bp__buf_append(&c, b.data + off + elen, b.len - off - elen);
      bp__mp_reader_init(&r, c.data, c.len);
      assert_ok(bp__mp_read_bytes(&r, &scratch, &ptr, &len));
      tu_assert_bytes_eq(ptr, len, want, n, "with a uint16 element");
      /* And a negative fixint there is refused. */
      c.data[off] = 0xff;
      c.data[off + 1] = 0x00; /* keep the rest parseable */
      c.data[off + 2] = 0x00;
      bp__mp_reader_init(&r, c.data, c.len);
      assert_int_not_equal(bp__mp_read_bytes(&r, &scratch, &ptr, &len), BP_OK);
      bp__buf_free(&c);
    }
    bp__buf_free(&scratch);
    bp__buf_free(&b);
  }
}

/* Every writer of byte arrays this processor can run (SSSE3 shuffles, the
 * portable loop) writes the same bytes, which decode back to the input, for
 * every length up to 300 and for bytes all small, all large or mixed; none
 * writes past the 5 + 2 * len bytes it may use. */
static void emit_byte_array_is_the_same_by_every_path(void **state) {
  (void)state;
  enum { MAX = 300, ROOM = 5 + 2 * MAX };
  uint8_t in[MAX], want[ROOM + 16], got[ROOM + 16], back[MAX];
  uint32_t x = 99;
  const unsigned paths[] = {~0u, BP__CPU_SSSE3 | BP__CPU_POPCNT};
  for (size_t len = 0; len <= MAX; len++)
    for (int mix = 0; mix < 3; mix++) {
      for (size_t i = 0; i < len; i++) {
        x = x * 1664525u + 1013904223u;
        uint8_t v = (uint8_t)(x >> 24);
        in[i] = mix == 0 ? v & 0x7f : mix == 1 ? v | 0x80 : v;
      }
      size_t want_len = (size_t)(bp__mp_emit_byte_array_using(0, want, in, len) - want);
      for (size_t k = 0; k < sizeof paths / sizeof paths[0]; k++) {
        memset(got, 0xa5, sizeof got);
        size_t got_len = (size_t)(bp__mp_emit_byte_array_using(paths[k], got, in, len) - got);
        if (got_len != want_len) fail_msg("length %zu, mix %d, features %#x: %zu bytes, portable %zu", len, mix, paths[k], got_len, want_len);
        tu_assert_bytes_eq(got, got_len, want, want_len, "elements");
        for (size_t i = 5 + 2 * len; i < sizeof got; i++)
          if (got[i] != 0xa5) fail_msg("length %zu, features %#x: byte %zu written, past the room of %zu", len, paths[k], i, 5 + 2 * len);
      }
      bp__mp_reader r;
      bp__mp_reader_init(&r, want, want_len);
      uint32_t n;
      assert_ok(bp__mp_read_array(&r, &n));
      assert_int_equal(n, len);
      const uint8_t *q = r.p;
      assert_true(bp__mp_take_int_bytes(&q, want + want_len, back, len));
      tu_assert_bytes_eq(back, len, in, len, "decoded back");
    }
}

/* Every decoder of byte arrays this processor can run (PEXT blocks, SSSE3
 * blocks, SSSE3 windows, portable windows) agrees with the element-by-element
 * definition on inputs that are mostly what writers emit, with elements of
 * other forms mixed in (cc with a small value, a bare high byte, runs of
 * cc cc), on text-like arrays (nearly every element one byte), at every
 * length and for every count asked. */
static void take_int_bytes_agrees_with_element_by_element(void **state) {
  (void)state;
  uint32_t x = 12345;
  uint8_t in[260], got[260], want[260];
  const unsigned paths[] = {~0u, BP__CPU_SSSE3 | BP__CPU_POPCNT, BP__CPU_SSSE3, 0};
  for (int round = 0; round < 40000; round++) {
    unsigned cpu = paths[round % 4];
    size_t len = 0;
    int odd = (round / 4) % 4; /* 0: canonical only */
    bool text = (round / 16) % 3 == 0;
    while (len < sizeof in - 2) {
      x = x * 1664525u + 1013904223u;
      uint8_t v = (uint8_t)(x >> 24);
      unsigned pick = (x >> 8) % 64;
      if (text && pick > 1) { v &= 0x7f; pick = 8; }                           /* one-byte elements */
      if (odd && pick == 0) { in[len++] = 0xcc; in[len++] = v & 0x7f; }          /* cc, small value */
      else if (odd == 2 && pick == 1) { in[len++] = v | 0x80; }                   /* bare high byte */
      else if (pick < 8) { in[len++] = 0xcc; in[len++] = 0xcc; }                  /* the value 0xcc */
      else if (v >= 0x80) { in[len++] = 0xcc; in[len++] = v; }
      else in[len++] = v;
    }
    x = x * 1664525u + 1013904223u;
    size_t end_at = (x >> 8) % (len + 1), n = (size_t)(round / 4) % 141; /* every count, by every path */
    const uint8_t *p1 = in, *p2 = in;
    memset(got, 0xa5, sizeof got); /* past n, this must stay */
    memset(want, 0, sizeof want);
    bool a = bp__mp_take_int_bytes_using(cpu, &p1, in + end_at, got, n);
    for (size_t i = n; i < sizeof got; i++)
      if (got[i] != 0xa5) fail_msg("round %d, features %#x: byte %zu written, past the %zu elements asked for", round, cpu, i, n);
    bool b = bp__mp_take_int_bytes_each(&p2, in + end_at, want, n);
    if (a != b)
      fail_msg("round %d, features %#x (%zu elements of %zu bytes): take says %d, the definition %d", round, cpu, n,
               end_at, a, b);
    if (a && p1 != p2) fail_msg("round %d, features %#x: take used %td bytes, the definition %td", round, cpu, p1 - in, p2 - in);
    if (!a && p1 != in) fail_msg("round %d, features %#x: a refused take moved the position", round, cpu);
    if (a) tu_assert_bytes_eq(got, n, want, n, "elements");
  }
}

/* ---- the public reader (batpak/wire.h) ---- */

static uint8_t *to_mp(const char *json, size_t *len) {
  uint8_t *mp;
  assert_ok(bp_json_to_msgpack(json, strlen(json), &mp, len));
  return mp;
}

/* Every type the JSON conversion writes is read back by the typed reads,
 * found by key, and a failed read (wrong type, missing key) leaves the
 * reader where it was. */
static void public_reader_reads_every_type_by_key(void **state) {
  (void)state;
  size_t len;
  uint8_t *mp = to_mp("{\"amount\": -40, \"memo\": \"rent\", \"tags\": [1, 2, {\"a\": null}], "
                      "\"big\": 18446744073709551615, \"pi\": 3.5, \"ok\": true, \"none\": null}", &len);
  bp_mp_reader r;
  bp_mp_reader_init(&r, mp, len);
  int64_t i;
  uint64_t u;
  double d;
  bool b;
  const char *str;
  size_t slen;
  uint32_t n;
  bp_mp_reader at = r;
  assert_ok(bp_mp_find_key(&at, "amount"));
  assert_ok(bp_mp_read_int(&at, &i));
  assert_int_equal(i, -40);
  at = r;
  assert_ok(bp_mp_find_key(&at, "memo"));
  assert_ok(bp_mp_read_str(&at, &str, &slen));
  assert_int_equal(slen, 4);
  assert_memory_equal(str, "rent", 4);
  at = r;
  assert_ok(bp_mp_find_key(&at, "big"));
  bp_mp_reader before = at;
  assert_status(bp_mp_read_int(&at, &i), BP_ESERIAL); /* past INT64_MAX */
  assert_ptr_equal(at.pos, before.pos);
  assert_ok(bp_mp_read_uint(&at, &u));
  assert_true(u == UINT64_MAX);
  at = r;
  assert_ok(bp_mp_find_key(&at, "pi"));
  assert_ok(bp_mp_read_double(&at, &d));
  assert_true(d == 3.5);
  at = r;
  assert_ok(bp_mp_find_key(&at, "ok"));
  assert_status(bp_mp_read_str(&at, &str, &slen), BP_ESERIAL);
  assert_ok(bp_mp_read_bool(&at, &b));
  assert_true(b);
  at = r;
  assert_ok(bp_mp_find_key(&at, "none"));
  assert_ok(bp_mp_read_nil(&at));
  at = r;
  assert_ok(bp_mp_find_key(&at, "tags"));
  assert_ok(bp_mp_read_array(&at, &n));
  assert_int_equal(n, 3);
  assert_ok(bp_mp_read_int(&at, &i));
  assert_ok(bp_mp_skip(&at));
  assert_ok(bp_mp_find_key(&at, "a"));
  assert_ok(bp_mp_read_nil(&at));
  at = r;
  assert_status(bp_mp_find_key(&at, "absent"), BP_ENOTFOUND);
  assert_ptr_equal(at.pos, r.pos);
  assert_status(bp_mp_find_key(&at, "amount") == BP_OK ? bp_mp_find_key(&at, "x") : BP_OK, BP_ESERIAL);
  /* The whole document, token by token, to its end. */
  at = r;
  assert_ok(bp_mp_skip(&at));
  assert_true(bp_mp_at_end(&at));
  bp_mp_value v;
  assert_status(bp_mp_next(&at, &v), BP_ESERIAL);
  bp_free(mp);
}

/* Keys that are not strings (containers, numbers) are stepped over whole,
 * and every cut of a document fails cleanly, never reading past its end. */
static void public_reader_steps_over_odd_keys_and_truncation(void **state) {
  (void)state;
  /* {[1, 2]: "x", 7: {"k": 1}, "want": 5} written by hand. */
  static const uint8_t doc[] = {0x83, 0x92, 0x01, 0x02, 0xa1, 'x', 0x07, 0x81, 0xa1, 'k', 0x01,
                                0xa4, 'w', 'a', 'n', 't', 0x05};
  bp_mp_reader r;
  bp_mp_reader_init(&r, doc, sizeof doc);
  assert_ok(bp_mp_find_key(&r, "want"));
  int64_t i;
  assert_ok(bp_mp_read_int(&r, &i));
  assert_int_equal(i, 5);
  assert_true(bp_mp_at_end(&r));
  for (size_t cut = 0; cut < sizeof doc; cut++) {
    uint8_t *copy = malloc(cut ? cut : 1);
    memcpy(copy, doc, cut);
    bp_mp_reader_init(&r, copy, cut);
    bp_status st = bp_mp_find_key(&r, "want");
    if (st == BP_OK) st = bp_mp_read_int(&r, &i);
    assert_true(st == BP_ESERIAL || st == BP_ENOTFOUND);
    free(copy);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(integers_take_their_smallest_form),
      cmocka_unit_test(integer_byte_arrays_decode_exactly),
      cmocka_unit_test(emit_byte_array_is_the_same_by_every_path),
      cmocka_unit_test(take_int_bytes_agrees_with_element_by_element),
      cmocka_unit_test(lengths_take_their_smallest_form),
      cmocka_unit_test(reader_round_trips_every_form),
      cmocka_unit_test(typed_reads_reject_out_of_range_and_wrong_types),
      cmocka_unit_test(reserved_type_byte_is_rejected),
      cmocka_unit_test(every_truncation_is_detected),
      cmocka_unit_test(container_counts_larger_than_the_input_are_rejected),
      cmocka_unit_test(byte_arrays_read_from_bin_or_integer_arrays),
      cmocka_unit_test(public_reader_reads_every_type_by_key),
      cmocka_unit_test(public_reader_steps_over_odd_keys_and_truncation),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
