/* test_id.c - UUIDv7 generation, ordering, formatting and parsing. */
#include "testutil.h"

#include <pthread.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void v7_has_version_and_variant_bits(void **state) {
  (void)state;
  for (int i = 0; i < 1000; i++) {
    bp_id id = bp_id_v7();
    assert_int_equal(bp_id_version(id), 7);
    assert_int_equal(id.lo >> 62, 2); /* RFC 4122 variant 10 */
  }
}

static void v7_timestamp_is_now(void **state) {
  (void)state;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t before = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
  bp_id id = bp_id_v7();
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t after = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
  uint64_t ms = bp_id_unix_ms(id);
  if (ms < before || ms > after + 1)
    fail_msg("id ms %llu not within [%llu, %llu]", (unsigned long long)ms,
             (unsigned long long)before, (unsigned long long)after);
}

static void v7_strictly_increases_within_a_thread(void **state) {
  (void)state;
  bp_id prev = bp_id_v7();
  int same_ms = 0;
  for (int i = 0; i < 200000; i++) {
    bp_id id = bp_id_v7();
    if (bp_id_cmp(prev, id) >= 0) {
      char a[33], b[33];
      bp_id_to_hex(prev, a);
      bp_id_to_hex(id, b);
      fail_msg("id %d not greater than its predecessor: %s then %s", i, a, b);
    }
    if (bp_id_unix_ms(id) == bp_id_unix_ms(prev)) same_ms++;
    prev = id;
  }
  /* 200k ids take a few milliseconds at most: most share a millisecond. */
  assert_true(same_ms > 1000);
}

#define THREADS 4
#define PER_THREAD 50000

static void *make_ids(void *arg) {
  bp_id *out = arg;
  for (int i = 0; i < PER_THREAD; i++) out[i] = bp_id_v7();
  return NULL;
}

static int cmp_ids(const void *a, const void *b) { return bp_id_cmp(*(const bp_id *)a, *(const bp_id *)b); }

static void v7_is_unique_across_threads(void **state) {
  (void)state;
  bp_id *all = malloc(sizeof(bp_id) * THREADS * PER_THREAD);
  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, make_ids, all + i * PER_THREAD);
  for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
  qsort(all, THREADS * PER_THREAD, sizeof(bp_id), cmp_ids);
  for (int i = 1; i < THREADS * PER_THREAD; i++)
    if (bp_id_eq(all[i - 1], all[i])) fail_msg("duplicate id at sorted index %d", i);
  free(all);
}

static void v7_differs_between_parent_and_forked_child(void **state) {
  (void)state;
  (void)bp_id_v7(); /* seed the parent's generator */
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  pid_t pid = fork();
  if (pid == 0) {
    bp_id id = bp_id_v7();
    ssize_t w = write(fds[1], &id, sizeof id);
    _exit(w == (ssize_t)sizeof id ? 0 : 1);
  }
  bp_id parent = bp_id_v7(), child;
  assert_int_equal(read(fds[0], &child, sizeof child), (ssize_t)sizeof child);
  int status;
  waitpid(pid, &status, 0);
  /* Same clock and same inherited state would give the same low bits. */
  assert_false(bp_id_eq(parent, child));
  assert_false(parent.lo == child.lo);
  close(fds[0]);
  close(fds[1]);
}

static void hex_round_trips_and_is_lowercase(void **state) {
  (void)state;
  bp_id id = {0x0123456789ABCDEFull, 0xFEDCBA9876543210ull};
  char hex[33];
  bp_id_to_hex(id, hex);
  assert_string_equal(hex, "0123456789abcdeffedcba9876543210");
  bp_id back;
  assert_ok(bp_id_from_hex(hex, &back));
  assert_true(bp_id_eq(id, back));
  assert_ok(bp_id_from_hex("0123456789ABCDEFFEDCBA9876543210", &back));
  assert_true(bp_id_eq(id, back));
}

static void hex_parse_rejects_bad_input(void **state) {
  (void)state;
  bp_id out = {1, 2};
  assert_status(bp_id_from_hex("", &out), BP_EINVAL);
  assert_status(bp_id_from_hex("0123456789abcdeffedcba987654321", &out), BP_EINVAL);   /* 31 */
  assert_status(bp_id_from_hex("0123456789abcdeffedcba98765432100", &out), BP_EINVAL); /* 33 */
  assert_status(bp_id_from_hex("0123456789abcdeffedcba987654321g", &out), BP_EINVAL);
  assert_status(bp_id_from_hex("01234567-89ab-cdef-fedc-ba9876543210", &out), BP_EINVAL);
  assert_status(bp_id_from_hex(" 123456789abcdeffedcba9876543210", &out), BP_EINVAL);
  assert_status(bp_id_from_hex(NULL, &out), BP_EINVAL);
  assert_true(out.hi == 1 && out.lo == 2); /* untouched */
}

static void uuid_round_trips(void **state) {
  (void)state;
  bp_id id = {0x01a214b556387ddbull, 0xbb27743e201c2348ull};
  char u[37];
  bp_id_to_uuid(id, u);
  assert_string_equal(u, "01a214b5-5638-7ddb-bb27-743e201c2348");
  bp_id back;
  assert_ok(bp_id_from_uuid(u, &back));
  assert_true(bp_id_eq(id, back));
  assert_ok(bp_id_from_uuid("01A214B5-5638-7DDB-BB27-743E201C2348", &back));
  assert_true(bp_id_eq(id, back));
}

static void uuid_parse_rejects_bad_input(void **state) {
  (void)state;
  bp_id out;
  assert_status(bp_id_from_uuid("01a214b556387ddbbb27743e201c2348", &out), BP_EINVAL);
  assert_status(bp_id_from_uuid("01a214b5-5638-7ddb-bb27-743e201c234", &out), BP_EINVAL);
  assert_status(bp_id_from_uuid("01a214b5-5638-7ddb-bb27-743e201c23488", &out), BP_EINVAL);
  assert_status(bp_id_from_uuid("01a214b5_5638-7ddb-bb27-743e201c2348", &out), BP_EINVAL);
  assert_status(bp_id_from_uuid("01a214b5-5638-7ddb-bb27-743e201c234x", &out), BP_EINVAL);
  assert_status(bp_id_from_uuid("01a214b-55638-7ddb-bb27-743e201c2348", &out), BP_EINVAL);
}

static void bytes_are_big_endian(void **state) {
  (void)state;
  bp_id id = {0x0102030405060708ull, 0x090a0b0c0d0e0f10ull};
  uint8_t raw[16];
  bp_id_to_bytes(id, raw);
  for (int i = 0; i < 16; i++) assert_int_equal(raw[i], i + 1);
  assert_true(bp_id_eq(bp_id_from_bytes(raw), id));
  assert_true(bp_id_is_nil(BP_ID_NIL));
  assert_int_equal(bp_id_cmp((bp_id){0, 5}, (bp_id){1, 0}), -1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(v7_has_version_and_variant_bits),
      cmocka_unit_test(v7_timestamp_is_now),
      cmocka_unit_test(v7_strictly_increases_within_a_thread),
      cmocka_unit_test(v7_is_unique_across_threads),
      cmocka_unit_test(v7_differs_between_parent_and_forked_child),
      cmocka_unit_test(hex_round_trips_and_is_lowercase),
      cmocka_unit_test(hex_parse_rejects_bad_input),
      cmocka_unit_test(uuid_round_trips),
      cmocka_unit_test(uuid_parse_rejects_bad_input),
      cmocka_unit_test(bytes_are_big_endian),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
