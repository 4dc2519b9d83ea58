/* test_hash.c - BLAKE3 against its official vectors, and hash-chain checks. */
#include "testutil.h"

static void blake3_matches_the_official_vectors(void **state) {
  (void)state;
  size_t n;
  char *text = (char *)tu_read_data("blake3_vectors.txt", &n);
  uint8_t *input = malloc(8192);
  for (int i = 0; i < 8192; i++) input[i] = (uint8_t)(i % 251);
  int cases = 0;
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
    if (line[0] == '#') continue;
    size_t len;
    char hex[80];
    if (sscanf(line, "%zu %79s", &len, hex) != 2) fail_msg("bad vector line: %s", line);
    size_t wlen;
    uint8_t *want = tu_from_hex(hex, &wlen);
    assert_int_equal(wlen, 32);
    uint8_t got[32];
    bp_compute_hash(input, len, got);
    char what[64];
    snprintf(what, sizeof what, "BLAKE3 of %zu bytes", len);
    tu_assert_bytes_eq(got, 32, want, 32, what);
    free(want);
    cases++;
  }
  assert_int_equal(cases, 17);
  free(input);
  free(text);
}

static void empty_input_may_be_null(void **state) {
  (void)state;
  uint8_t a[32], b[32];
  bp_compute_hash(NULL, 0, a);
  bp_compute_hash("", 0, b);
  assert_memory_equal(a, b, 32);
}

static void verify_chain_checks_link_and_content(void **state) {
  (void)state;
  const char *payload = "\x81\xa1i\x01";
  bp_hash_chain chain;
  uint8_t genesis[32] = {0};
  memset(chain.prev_hash, 0, 32);
  bp_compute_hash(payload, 4, chain.event_hash);
  assert_true(bp_verify_chain(payload, 4, &chain, genesis));

  /* Wrong predecessor. */
  uint8_t other[32];
  memset(other, 0xAB, 32);
  assert_false(bp_verify_chain(payload, 4, &chain, other));
  /* Content altered. */
  assert_false(bp_verify_chain("\x81\xa1i\x02", 4, &chain, genesis));
  /* Next link. */
  bp_hash_chain next;
  memcpy(next.prev_hash, chain.event_hash, 32);
  bp_compute_hash("x", 1, next.event_hash);
  assert_true(bp_verify_chain("x", 1, &next, chain.event_hash));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(blake3_matches_the_official_vectors),
      cmocka_unit_test(empty_input_may_be_null),
      cmocka_unit_test(verify_chain_checks_link_and_content),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
