/* pool.c - helper threads for large reads (pool.h). */
#include "store/pool.h"

#include <stdlib.h>

struct bp__pool_work {
  bp__pool_fn fn;
  void *ctx;
  uint64_t chunks;
  _Atomic uint64_t next;    /* the next chunk nobody has taken */
};

/* Takes and does chunks until none is left; returns how many it did. */
static uint64_t take_chunks(bp__pool_work *w) {
  for (uint64_t done = 0;; done++) {
    uint64_t c = atomic_fetch_add_explicit(&w->next, 1, memory_order_relaxed);
    if (c >= w->chunks) return done;
    w->fn(w->ctx, c);
  }
}

static void *helper_main(void *arg) {
  bp__pool *p = arg;
  uint64_t joined = 0;
  pthread_mutex_lock(&p->lock);
  for (;;) {
    while (!p->stop && (!p->work || p->posted == joined)) pthread_cond_wait(&p->wake, &p->lock);
    if (p->stop) break;
    joined = p->posted;
    bp__pool_work *w = p->work;
    p->active++;
    pthread_mutex_unlock(&p->lock);
    atomic_fetch_add_explicit(&p->helped, take_chunks(w), memory_order_relaxed);
    pthread_mutex_lock(&p->lock);
    if (--p->active == 0) pthread_cond_broadcast(&p->idle);
  }
  pthread_mutex_unlock(&p->lock);
  return NULL;
}

void bp__pool_init(bp__pool *p, uint32_t helpers, size_t stack_size) {
  *p = (bp__pool){.helpers = helpers, .stack_size = stack_size};
  pthread_mutex_init(&p->lock, NULL);
  pthread_cond_init(&p->wake, NULL);
  pthread_cond_init(&p->idle, NULL);
}

/* Starts the helpers, once; those that cannot be started are done without.
 * Called with the lock held. */
static void start_helpers(bp__pool *p) {
  p->tried = true;
  p->threads = calloc(p->helpers, sizeof *p->threads);
  if (!p->threads) return;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  if (p->stack_size) pthread_attr_setstacksize(&attr, p->stack_size);
  while (p->started < p->helpers && pthread_create(&p->threads[p->started], &attr, helper_main, p) == 0)
    p->started++;
  pthread_attr_destroy(&attr);
}

void bp__pool_stop(bp__pool *p) {
  pthread_mutex_lock(&p->lock);
  p->stop = true;
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->lock);
  for (uint32_t i = 0; i < p->started; i++) pthread_join(p->threads[i], NULL);
  free(p->threads);
  pthread_cond_destroy(&p->idle);
  pthread_cond_destroy(&p->wake);
  pthread_mutex_destroy(&p->lock);
}

void bp__pool_run(bp__pool *p, bp__pool_fn fn, void *ctx, uint64_t chunks) {
  bp__pool_work w = {fn, ctx, chunks, 0};
  bool posted = false;
  /* Helpers busy with another caller's work (the lock held, work posted, or
   * helpers still finishing one): this caller works alone rather than wait. */
  if (p->helpers && chunks > 1 && pthread_mutex_trylock(&p->lock) == 0) {
    if (!p->tried) start_helpers(p);
    if (!p->work && !p->active && p->started) {
      p->work = &w;
      p->posted++;
      pthread_cond_broadcast(&p->wake);
      posted = true;
    }
    pthread_mutex_unlock(&p->lock);
  }
  (void)take_chunks(&w);
  if (!posted) return;
  /* Every chunk is taken; wait for those a helper is still doing. A helper
   * that wakes from now on finds no work. */
  pthread_mutex_lock(&p->lock);
  p->work = NULL;
  while (p->active) pthread_cond_wait(&p->idle, &p->lock);
  pthread_mutex_unlock(&p->lock);
}
