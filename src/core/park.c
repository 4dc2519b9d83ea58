/* park.c - sleeping until a 32-bit word changes (internal.h).
 *
 * On Linux this is a private futex: a wait is one system call that returns
 * at once if the word no longer holds the value the caller saw, and one wake
 * call rouses every sleeper, without a mutex they would all have to take in
 * turn on the way out. Elsewhere a process-wide mutex and condition variable
 * do the same: the waiter checks the word under the mutex, and the waker
 * changes the word before it takes the mutex to broadcast, so a waiter either
 * sees the new value or is already asleep when the broadcast comes (built
 * on Linux too with BP__PARK_PORTABLE, for its test). */
#include "internal.h"

#if defined(__linux__) && !defined(BP__PARK_PORTABLE)
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

void bp__park_wait(_Atomic uint32_t *word, uint32_t seen) {
  /* EAGAIN (the word changed), EINTR and spurious returns all mean: look again. */
  syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
}

void bp__park_wake_all(_Atomic uint32_t *word) {
  syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}
#else
#include <pthread.h>

static pthread_mutex_t park_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t park_cond = PTHREAD_COND_INITIALIZER;

void bp__park_wait(_Atomic uint32_t *word, uint32_t seen) {
  pthread_mutex_lock(&park_lock);
  if (atomic_load(word) == seen) pthread_cond_wait(&park_cond, &park_lock);
  pthread_mutex_unlock(&park_lock);
}

void bp__park_wake_all(_Atomic uint32_t *word) {
  (void)word;
  pthread_mutex_lock(&park_lock);
  pthread_cond_broadcast(&park_cond);
  pthread_mutex_unlock(&park_lock);
}
#endif
