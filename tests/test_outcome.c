/*
 * test_outcome.c - the Outcome algebra: constructors, combinators as the crate
 * defines them, the wire form, and property tests (seeded random outcomes,
 * thousands of cases) of the monad laws and of distribution over Batch.
 */
#include "testutil.h"

/* Values are MessagePack unsigned integers. */
static bp_outcome *ok_u(uint64_t v) {
  uint8_t b[9];
  size_t n;
  if (v < 128) { b[0] = (uint8_t)v; n = 1; }
  else { b[0] = 0xcf; for (int i = 0; i < 8; i++) b[1 + i] = (uint8_t)(v >> (56 - 8 * i)); n = 9; }
  return bp_outcome_ok(b, n);
}

static uint64_t read_u(const void *p, size_t n) {
  const uint8_t *b = p;
  if (n == 1) return b[0];
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = v << 8 | b[1 + i];
  return v;
}

static uint64_t val_of(const bp_outcome *o) {
  size_t n = 0;
  const void *p = bp_outcome_value(o, &n);
  if (!p) fail_msg("not an Ok outcome");
  return read_u(p, n);
}

static bp_outcome *err_k(bp_error_kind k, const char *msg) {
  bp_outcome_error e = {k, 7, msg, false, NULL, 0};
  return bp_outcome_err(&e);
}

static const uint8_t WAIT_EVENT[] = {0x81, 0xa5, 'E', 'v', 'e', 'n', 't', 0x81, 0xa8, 'e', 'v', 'e', 'n', 't', '_', 'i',
                                     'd', 0xc4, 0x10, 0xde, 0xad, 0xbe, 0xef, 0xca, 0xfe, 0xba, 0xbe, 0x12, 0x34,
                                     0x56, 0x78, 0x90, 0xab, 0xcd, 0xef};

static void constructors_and_accessors(void **state) {
  (void)state;
  bp_outcome *o = ok_u(5);
  assert_int_equal(bp_outcome_type_of(o), BP_OUTCOME_OK);
  assert_int_equal(val_of(o), 5);
  assert_true(bp_outcome_is_terminal(o));
  bp_outcome_free(o);
  assert_null(bp_outcome_ok("\xc1", 1)); /* not MessagePack */
  assert_int_equal(bp_last_error()->code, BP_ESERIAL);
  assert_null(bp_outcome_ok("\x01\x02", 2)); /* two values */
  o = bp_outcome_retry(250, 2, 5, "busy");
  uint64_t after;
  uint32_t attempt, max;
  assert_true(bp_outcome_retry_of(o, &after, &attempt, &max));
  assert_int_equal(after, 250);
  assert_string_equal(bp_outcome_reason(o), "busy");
  assert_false(bp_outcome_is_terminal(o));
  bp_outcome_free(o);
  bp_id token = {1, 2};
  o = bp_outcome_pending(WAIT_EVENT, sizeof WAIT_EVENT, token);
  assert_non_null(o);
  bp_id t;
  assert_true(bp_outcome_pending_of(o, NULL, NULL, &t));
  assert_true(bp_id_eq(t, token));
  bp_outcome_free(o);
  assert_null(bp_outcome_pending("\x81\xa3" "Bad\xc0", 6, token)); /* not a wait condition */
  assert_true(bp_error_kind_is_retryable(BP_ERRKIND_TIMEOUT));
  assert_false(bp_error_kind_is_retryable(BP_ERRKIND_CONFLICT));
  assert_true(bp_error_kind_is_domain(BP_ERRKIND_POLICY_REJECTION));
  assert_true(bp_error_kind_is_operational(BP_ERRKIND_SERIALIZATION));
  assert_false(bp_error_kind_is_domain(BP_ERRKIND_CUSTOM));
}

static bp_status double_it(const void *v, size_t n, void **out, size_t *out_len, void *ctx) {
  (void)ctx;
  bp_outcome *r = ok_u(read_u(v, n) * 2);
  size_t len;
  const void *p = bp_outcome_value(r, &len);
  *out = malloc(len);
  memcpy(*out, p, len);
  *out_len = len;
  bp_outcome_free(r);
  return BP_OK;
}

static bp_outcome_error upgrade(const bp_outcome_error *e, void *ctx) {
  (void)ctx;
  bp_outcome_error n = *e;
  n.kind = BP_ERRKIND_INTERNAL;
  n.message = "upgraded";
  return n;
}

static bp_outcome *recover(const bp_outcome_error *e, void *ctx) {
  (void)e;
  (void)ctx;
  return ok_u(0);
}

static bool is_big(const void *v, size_t n, void *ctx) {
  (void)ctx;
  return read_u(v, n) > 10;
}

static bp_outcome *minus_ten(const void *v, size_t n, void *ctx) {
  (void)ctx;
  return ok_u(read_u(v, n) - 10);
}

static void count_ok(const void *v, size_t n, void *ctx) {
  (void)v;
  (void)n;
  (*(int *)ctx)++;
}

static void combinators_distribute_over_batch(void **state) {
  (void)state;
  bp_outcome *items[4] = {ok_u(3), err_k(BP_ERRKIND_CONFLICT, "c"), ok_u(20), bp_outcome_cancelled("stop")};
  bp_outcome *b = bp_outcome_batch(items, 4);
  b = bp_outcome_map(b, double_it, NULL);
  assert_int_equal(val_of(bp_outcome_batch_item(b, 0)), 6);
  assert_int_equal(val_of(bp_outcome_batch_item(b, 2)), 40);
  int seen = 0;
  b = bp_outcome_inspect(b, count_ok, &seen);
  assert_int_equal(seen, 2);
  b = bp_outcome_and_then_if(b, is_big, minus_ten, NULL);
  assert_int_equal(val_of(bp_outcome_batch_item(b, 0)), 6);  /* not big */
  assert_int_equal(val_of(bp_outcome_batch_item(b, 2)), 30);
  b = bp_outcome_map_err(b, upgrade, NULL);
  bp_outcome_error e;
  assert_true(bp_outcome_error_of(bp_outcome_batch_item(b, 1), &e));
  assert_int_equal(e.kind, BP_ERRKIND_INTERNAL);
  assert_string_equal(e.message, "upgraded");
  b = bp_outcome_or_else(b, recover, NULL);
  assert_int_equal(bp_outcome_type_of(bp_outcome_batch_item(b, 1)), BP_OUTCOME_OK);
  assert_int_equal(bp_outcome_type_of(bp_outcome_batch_item(b, 3)), BP_OUTCOME_CANCELLED);
  void *v;
  size_t vl;
  assert_ok(bp_outcome_unwrap_or(b, "\x09", 1, &v, &vl)); /* a batch is not Ok */
  assert_int_equal(((uint8_t *)v)[0], 9);
  free(v);
}

static void zip_follows_the_crate_priority(void **state) {
  (void)state;
  bp_outcome *z = bp_outcome_zip(ok_u(1), ok_u(2));
  size_t n;
  const uint8_t *p = bp_outcome_value(z, &n);
  tu_assert_bytes_eq(p, n, "\x92\x01\x02", 3, "zip of two Ok");
  bp_outcome_free(z);
  z = bp_outcome_zip(bp_outcome_retry(1, 1, 2, "r"), err_k(BP_ERRKIND_TIMEOUT, "t"));
  assert_int_equal(bp_outcome_type_of(z), BP_OUTCOME_ERR); /* Err outranks Retry */
  bp_outcome_free(z);
  z = bp_outcome_zip(bp_outcome_cancelled("a"), bp_outcome_cancelled("b"));
  assert_string_equal(bp_outcome_reason(z), "a"); /* ties: the first wins */
  bp_outcome_free(z);
  bp_outcome *two[2] = {ok_u(1), ok_u(2)};
  bp_outcome *three[3] = {ok_u(10), ok_u(20), ok_u(30)};
  z = bp_outcome_zip(bp_outcome_batch(two, 2), bp_outcome_batch(three, 3));
  assert_int_equal(bp_outcome_batch_len(z), 2); /* truncated to the shorter */
  p = bp_outcome_value(bp_outcome_batch_item(z, 1), &n);
  tu_assert_bytes_eq(p, n, "\x92\x02\x14", 3, "pairwise zip");
  bp_outcome_free(z);
  bp_outcome *pair[2] = {ok_u(1), ok_u(2)};
  z = bp_outcome_zip(ok_u(7), bp_outcome_batch(pair, 2));
  p = bp_outcome_value(bp_outcome_batch_item(z, 1), &n);
  tu_assert_bytes_eq(p, n, "\x92\x07\x02", 3, "Ok zipped into a batch");
  bp_outcome_free(z);
}

static void join_all_and_join_any(void **state) {
  (void)state;
  bp_outcome *inner[2] = {ok_u(2), ok_u(3)};
  bp_outcome *items[3] = {ok_u(1), bp_outcome_batch(inner, 2), ok_u(4)};
  bp_outcome *j = bp_outcome_join_all(items, 3);
  size_t n;
  const uint8_t *p = bp_outcome_value(j, &n);
  tu_assert_bytes_eq(p, n, "\x94\x01\x02\x03\x04", 5, "join_all flattens batches");
  bp_outcome_free(j);
  bp_outcome *bad[3] = {ok_u(1), err_k(BP_ERRKIND_VALIDATION, "first"), err_k(BP_ERRKIND_VALIDATION, "second")};
  j = bp_outcome_join_all(bad, 3);
  bp_outcome_error e;
  assert_true(bp_outcome_error_of(j, &e));
  assert_string_equal(e.message, "first");
  bp_outcome_free(j);
  bp_outcome *any[3] = {err_k(BP_ERRKIND_TIMEOUT, "a"), ok_u(5), err_k(BP_ERRKIND_TIMEOUT, "b")};
  j = bp_outcome_join_any(any, 3);
  assert_int_equal(val_of(j), 5);
  bp_outcome_free(j);
  bp_outcome *errs[2] = {err_k(BP_ERRKIND_TIMEOUT, "a"), err_k(BP_ERRKIND_TIMEOUT, "last")};
  j = bp_outcome_join_any(errs, 2);
  assert_true(bp_outcome_error_of(j, &e));
  assert_string_equal(e.message, "last");
  bp_outcome_free(j);
  j = bp_outcome_join_any(NULL, 0);
  assert_true(bp_outcome_error_of(j, &e));
  assert_int_equal(e.kind, BP_ERRKIND_INTERNAL);
  bp_outcome_free(j);
}

static void wire_form_is_adjacently_tagged_with_golden_parts(void **state) {
  (void)state;
  size_t cn, wn, hl;
  char *h = (char *)tu_read_data("golden/compensation_action_v1.hex", &hl);
  uint8_t *comp = tu_from_hex(h, &cn);
  free(h);
  h = (char *)tu_read_data("golden/wait_condition_v1.hex", &hl);
  uint8_t *wait = tu_from_hex(h, &wn);
  free(h);
  bp_outcome_error err = {BP_ERRKIND_CUSTOM, 513, "boom", true, comp, cn};
  bp_outcome *items[3] = {ok_u(1), bp_outcome_err(&err), bp_outcome_pending(wait, wn, (bp_id){3, 4})};
  bp_outcome *b = bp_outcome_batch(items, 3);
  uint8_t *mp;
  size_t n;
  assert_ok(bp_outcome_encode(b, &mp, &n));
  /* Built by hand from the crate's rules: map {type, data}; the Err's data
   * fields in declaration order; Custom(u16) as {"Custom": 513}. */
  bp_outcome *ok = ok_u(1);
  uint8_t *okmp;
  size_t okn;
  assert_ok(bp_outcome_encode(ok, &okmp, &okn));
  tu_assert_bytes_eq(okmp, okn, "\x82\xa4type\xa2Ok\xa4" "data\x01", 15, "Ok");
  char *json;
  assert_ok(bp_msgpack_to_json(mp, n, &json));
  const char *want_start = "{\"type\":\"Batch\",\"data\":[{\"type\":\"Ok\",\"data\":1},{\"type\":\"Err\",\"data\":"
                           "{\"kind\":{\"Custom\":513},\"message\":\"boom\",\"compensation\":{\"Rollback\":";
  if (strncmp(json, want_start, strlen(want_start)) != 0) fail_msg("wire form: %s", json);
  /* The golden records appear byte for byte inside. */
  assert_non_null(memmem(mp, n, comp, cn));
  assert_non_null(memmem(mp, n, wait, wn));
  bp_outcome *back;
  assert_ok(bp_outcome_decode(mp, n, &back));
  assert_true(bp_outcome_equal(b, back));
  bp_outcome_free(back);
  assert_status(bp_outcome_decode(mp, n - 1, &back), BP_ESERIAL);
  assert_status(bp_outcome_decode("\x82\xa4type\xa3" "Bad\xa4" "data\xc0", 15, &back), BP_ESERIAL);
  bp_free(json);
  bp_free(okmp);
  bp_free(mp);
  bp_outcome_free(ok);
  bp_outcome_free(b);
  free(comp);
  free(wait);
}

static void flatten_unwraps_one_level(void **state) {
  (void)state;
  bp_outcome *inner = bp_outcome_cancelled("inner");
  uint8_t *mp;
  size_t n;
  assert_ok(bp_outcome_encode(inner, &mp, &n));
  bp_outcome *outer = bp_outcome_ok(mp, n);
  bp_outcome *flat = bp_outcome_flatten(outer);
  assert_true(bp_outcome_equal(flat, inner));
  bp_outcome_free(flat);
  flat = bp_outcome_flatten(ok_u(3)); /* 3 is not an outcome */
  bp_outcome_error e;
  assert_true(bp_outcome_error_of(flat, &e));
  assert_int_equal(e.kind, BP_ERRKIND_SERIALIZATION);
  bp_outcome_free(flat);
  bp_outcome_free(inner);
  bp_free(mp);
}

/* ---------------------------------------------------------------- properties */

static uint64_t seed = 0x2545F4914F6CDD1Dull;
static uint32_t rnd(uint32_t n) {
  seed ^= seed << 13;
  seed ^= seed >> 7;
  seed ^= seed << 17;
  return (uint32_t)(seed % n);
}

static bp_outcome *gen(int depth) {
  switch (rnd(depth > 0 ? 6 : 5)) {
    case 0: case 1: return ok_u(rnd(1000));
    case 2: return err_k((bp_error_kind)rnd(8), rnd(2) ? "e1" : "e2");
    case 3: return bp_outcome_retry(rnd(100), rnd(3), 3, "r");
    case 4: return rnd(2) ? bp_outcome_cancelled("c") : bp_outcome_pending(WAIT_EVENT, sizeof WAIT_EVENT, (bp_id){0, rnd(9)});
    default: {
      size_t n = rnd(4);
      bp_outcome *items[4];
      for (size_t i = 0; i < n; i++) items[i] = gen(depth - 1);
      return bp_outcome_batch(items, n);
    }
  }
}

/* f and g: deterministic functions of the value, into every kind of outcome. */
static bp_outcome *f(const void *v, size_t n, void *ctx) {
  (void)ctx;
  uint64_t x = read_u(v, n);
  switch (x % 5) {
    case 0: return ok_u(x + 1);
    case 1: return err_k(BP_ERRKIND_VALIDATION, "f");
    case 2: { bp_outcome *it[2] = {ok_u(x * 2), ok_u(x + 3)}; return bp_outcome_batch(it, 2); }
    case 3: return bp_outcome_retry(x, 1, 2, "f");
    default: return ok_u(x * 3);
  }
}

static bp_outcome *g(const void *v, size_t n, void *ctx) {
  (void)ctx;
  uint64_t x = read_u(v, n);
  if (x % 3 == 0) return bp_outcome_cancelled("g");
  if (x % 3 == 1) return ok_u(x + 7);
  bp_outcome *it[1] = {ok_u(x / 2)};
  return bp_outcome_batch(it, 1);
}

static bp_outcome *unit(const void *v, size_t n, void *ctx) {
  (void)ctx;
  return bp_outcome_ok(v, n);
}

static bp_outcome *f_then_g(const void *v, size_t n, void *ctx) {
  return bp_outcome_and_then(f(v, n, ctx), g, ctx);
}

#define CASES 3000

static void monad_left_identity(void **state) {
  (void)state;
  for (int i = 0; i < CASES; i++) {
    uint64_t a = rnd(100000);
    bp_outcome *lhs = bp_outcome_and_then(ok_u(a), f, NULL);
    bp_outcome *va = ok_u(a);
    size_t n;
    const void *p = bp_outcome_value(va, &n);
    bp_outcome *rhs = f(p, n, NULL);
    if (!bp_outcome_equal(lhs, rhs)) fail_msg("left identity fails for a = %llu", (unsigned long long)a);
    bp_outcome_free(lhs);
    bp_outcome_free(rhs);
    bp_outcome_free(va);
  }
}

static void monad_right_identity(void **state) {
  (void)state;
  for (int i = 0; i < CASES; i++) {
    bp_outcome *m = gen(3);
    bp_outcome *copy = bp_outcome_clone(m);
    bp_outcome *r = bp_outcome_and_then(m, unit, NULL);
    if (!bp_outcome_equal(r, copy)) fail_msg("right identity fails at case %d", i);
    bp_outcome_free(r);
    bp_outcome_free(copy);
  }
}

static void monad_associativity(void **state) {
  (void)state;
  for (int i = 0; i < CASES; i++) {
    bp_outcome *m = gen(3);
    bp_outcome *m2 = bp_outcome_clone(m);
    bp_outcome *lhs = bp_outcome_and_then(bp_outcome_and_then(m, f, NULL), g, NULL);
    bp_outcome *rhs = bp_outcome_and_then(m2, f_then_g, NULL);
    if (!bp_outcome_equal(lhs, rhs)) fail_msg("associativity fails at case %d", i);
    bp_outcome_free(lhs);
    bp_outcome_free(rhs);
  }
}

static void map_and_bind_distribute_over_batch(void **state) {
  (void)state;
  for (int i = 0; i < CASES; i++) {
    size_t n = rnd(5);
    bp_outcome *items[5], *each[5];
    for (size_t k = 0; k < n; k++) {
      items[k] = gen(2);
      each[k] = bp_outcome_and_then(bp_outcome_clone(items[k]), f, NULL);
    }
    bp_outcome *lhs = bp_outcome_and_then(bp_outcome_batch(items, n), f, NULL);
    bp_outcome *rhs = bp_outcome_batch(each, n);
    if (!bp_outcome_equal(lhs, rhs)) fail_msg("and_then does not distribute over a batch (case %d)", i);
    bp_outcome_free(lhs);
    bp_outcome_free(rhs);
  }
}

static void wire_round_trip_of_random_outcomes(void **state) {
  (void)state;
  for (int i = 0; i < CASES; i++) {
    bp_outcome *m = gen(3);
    uint8_t *mp;
    size_t n;
    assert_ok(bp_outcome_encode(m, &mp, &n));
    bp_outcome *back;
    assert_ok(bp_outcome_decode(mp, n, &back));
    if (!bp_outcome_equal(m, back)) fail_msg("round trip differs at case %d", i);
    bp_outcome_free(m);
    bp_outcome_free(back);
    bp_free(mp);
  }
}

/* A constructor that fails returns NULL; whatever is built from it is NULL
 * too, with the constructor's error, and the other parts are freed (the
 * sanitizer build finds a leak if not). */
static void a_failed_outcome_passes_through_combinators(void **state) {
  (void)state;
  bp_outcome *bad = bp_outcome_ok("\xc1", 1); /* 0xc1 is never valid MessagePack */
  assert_null(bad);
  assert_int_equal(bp_last_error()->code, BP_ESERIAL);
  bp_outcome *items[2] = {bp_outcome_ok("\x01", 1), bad};
  assert_null(bp_outcome_batch(items, 2));
  assert_int_equal(bp_last_error()->code, BP_ESERIAL);
  assert_null(bp_outcome_zip(bp_outcome_ok("\x02", 1), NULL));
  assert_null(bp_outcome_zip(NULL, bp_outcome_cancelled("stop")));
  bp_outcome *all[3] = {bp_outcome_ok("\x03", 1), NULL, bp_outcome_retry(5, 1, 2, "busy")};
  assert_null(bp_outcome_join_all(all, 3));
  for (int i = 0; i < 3; i++) assert_null(all[i]);
  bp_outcome *any[2] = {NULL, bp_outcome_ok("\x04", 1)};
  assert_null(bp_outcome_join_any(any, 2));
  assert_null(any[1]);
  assert_null(bp_outcome_map(NULL, NULL, NULL));
  assert_int_equal(bp_last_error()->code, BP_ESERIAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(constructors_and_accessors),
      cmocka_unit_test(combinators_distribute_over_batch),
      cmocka_unit_test(zip_follows_the_crate_priority),
      cmocka_unit_test(join_all_and_join_any),
      cmocka_unit_test(wire_form_is_adjacently_tagged_with_golden_parts),
      cmocka_unit_test(flatten_unwraps_one_level),
      cmocka_unit_test(monad_left_identity),
      cmocka_unit_test(monad_right_identity),
      cmocka_unit_test(monad_associativity),
      cmocka_unit_test(map_and_bind_distribute_over_batch),
      cmocka_unit_test(wire_round_trip_of_random_outcomes),
      cmocka_unit_test(a_failed_outcome_passes_through_combinators),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
