/* park.c - sleeping until a 32-bit word changes (internal.h).
 *
 * On Linux this is a private futex: a wait is one system call that returns
 * at once if the word no longer holds the value the caller saw, and one wake
 * call rouses every sleeper, without a mutex they would all have to take in
 * turn on the way out. The wake also says how many it roused, and each of
 * them learns that it was one, so that callers can keep count of who still
 * sleeps (writer.c) without waiting for the woken to run.
 * Elsewhere a process-wide mutex and condition variable do the same, without
 * the count: the waiter checks the word under the mutex, and the waker
 * changes the word before it takes the mutex to broadcast, so a waiter either
 * sees the new value or is already asleep when the broadcast comes (built
 * on Linux too with BP__PARK_PORTABLE, for its test). */
#include "internal.h"

#if defined(__linux__)
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#endif

#if defined(__linux__) && !defined(BP__PARK_PORTABLE)

bool bp__park_wait(_Atomic uint32_t *word, uint32_t seen) {
  /* 0 only when a wake took the caller off the futex's queue (the kernel
   * retries a spurious return itself); -1 with EAGAIN when the word had
   * changed, EINTR on a signal. */
  return syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0) == 0;
}

unsigned bp__park_wake_all(_Atomic uint32_t *word) {
  long woken = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
  return woken > 0 ? (unsigned)woken : 0;
}
#else
#include <pthread.h>

static pthread_mutex_t park_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t park_cond = PTHREAD_COND_INITIALIZER;

bool bp__park_wait(_Atomic uint32_t *word, uint32_t seen) {
  pthread_mutex_lock(&park_lock);
  if (atomic_load(word) == seen) pthread_cond_wait(&park_cond, &park_lock);
  pthread_mutex_unlock(&park_lock);
  return false;
}

unsigned bp__park_wake_all(_Atomic uint32_t *word) {
  (void)word;
  pthread_mutex_lock(&park_lock);
  pthread_cond_broadcast(&park_cond);
  pthread_mutex_unlock(&park_lock);
  return 0;
}
#endif

#if defined(__linux__)
void bp__park_wait_shared(_Atomic uint32_t *word, uint32_t seen, int timeout_ms) {
  struct timespec t, *tp = NULL;
  if (timeout_ms >= 0) {
    t.tv_sec = timeout_ms / 1000;
    t.tv_nsec = (long)(timeout_ms % 1000) * 1000000;
    tp = &t;
  }
  /* Not _PRIVATE: the waker is another process mapping the same file. */
  (void)syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, seen, tp, NULL, 0);
}

void bp__park_wake_shared(_Atomic uint32_t *word) {
  (void)syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}
#else
#include <time.h>

void bp__park_wait_shared(_Atomic uint32_t *word, uint32_t seen, int timeout_ms) {
  if (atomic_load(word) != seen) return;
  int ms = timeout_ms < 0 || timeout_ms > 50 ? 50 : timeout_ms;
  struct timespec t = {0, (long)ms * 1000000};
  nanosleep(&t, NULL);
}

void bp__park_wake_shared(_Atomic uint32_t *word) { (void)word; }
#endif
