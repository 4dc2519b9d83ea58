/* test_park.c - sleeping until a word changes (bp__park_wait, bp__park_wake_all).
 * Built twice: with the library's own park.c (a futex on Linux) and with
 * park.c's portable mutex and condition variable (test_park_portable). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "internal.h"

#include <pthread.h>
#include <unistd.h>

#define WAITERS 6

typedef struct waiter {
  _Atomic uint32_t *word;
  _Atomic int *ready;
  uint32_t saw;   /* the value the waiter found when it stopped waiting */
  unsigned woken; /* waits that returned true: counted by a wake */
} waiter;

static void *park_until_moved(void *p) {
  waiter *w = p;
  atomic_fetch_add(w->ready, 1);
  uint32_t v;
  while ((v = atomic_load(w->word)) == 0) w->woken += bp__park_wait(w->word, 0);
  w->saw = v;
  return NULL;
}

static void wait_returns_at_once_when_the_word_moved(void **state) {
  (void)state;
  _Atomic uint32_t word = 5;
  assert_false(bp__park_wait(&word, 4)); /* would never return if it slept; no wake counted it */
  assert_int_equal(bp__park_wake_all(&word), 0); /* nobody waits */
  assert_int_equal(atomic_load(&word), 5);
}

/* Every waiter returns, and the wakes counted exactly the waits that
 * returned true (none where there is no count). */
static void wake_all_rouses_every_parked_thread(void **state) {
  (void)state;
  for (int round = 0; round < 50; round++) {
    _Atomic uint32_t word = 0;
    _Atomic int ready = 0;
    waiter w[WAITERS];
    pthread_t th[WAITERS];
    for (int i = 0; i < WAITERS; i++) {
      w[i] = (waiter){&word, &ready, 0, 0};
      assert_int_equal(pthread_create(&th[i], NULL, park_until_moved, &w[i]), 0);
    }
    while (atomic_load(&ready) < WAITERS) usleep(50);
    if (round % 2) usleep(2000); /* every other round, let them fall asleep first */
    atomic_store(&word, (uint32_t)round + 1);
    unsigned counted = bp__park_wake_all(&word);
    unsigned returned_true = 0;
    for (int i = 0; i < WAITERS; i++) {
      assert_int_equal(pthread_join(th[i], NULL), 0);
      assert_int_equal(w[i].saw, round + 1);
      returned_true += w[i].woken;
    }
    assert_int_equal(counted, returned_true);
    assert_true(counted <= WAITERS);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(wait_returns_at_once_when_the_word_moved),
      cmocka_unit_test(wake_all_rouses_every_parked_thread),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
