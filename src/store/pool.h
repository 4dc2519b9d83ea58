/*
 * pool.h - helper threads that share a large piece of work with its caller.
 *
 * The work is cut into numbered chunks. The caller posts it, then takes
 * chunks itself; helpers that wake in time take chunks too. The caller never
 * waits for a helper to start, only for chunks a helper has already taken, so
 * a busy machine costs it a wake-up call and no more. One piece of work runs
 * on the helpers at a time: a caller that finds them busy does its work
 * alone. Helpers start at the first piece of work and stop at bp__pool_stop.
 */
#ifndef BATPAK_STORE_POOL_H
#define BATPAK_STORE_POOL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Does chunk number `chunk` of the work; called on the caller's thread and on
 * helpers at once, each chunk exactly once. */
typedef void (*bp__pool_fn)(void *ctx, uint64_t chunk);

typedef struct bp__pool_work bp__pool_work;

typedef struct bp__pool {
  pthread_mutex_t lock;
  pthread_cond_t wake;      /* helpers: work was posted, or stop */
  pthread_cond_t idle;      /* the caller: the last helper left its work */
  pthread_t *threads;
  uint32_t helpers;         /* helpers wanted */
  uint32_t started;         /* helpers running (those that could be started) */
  bool tried;               /* starting them was tried */
  bool stop;
  size_t stack_size;        /* 0: the default */
  bp__pool_work *work;      /* the posted work, or NULL */
  uint64_t posted;          /* works posted so far: a helper joins each once */
  uint32_t active;          /* helpers inside the posted work */
  _Atomic uint64_t helped;  /* chunks done by helpers so far */
} bp__pool;

/* An idle pool of `helpers` threads (none started yet; 0: the caller always
 * works alone). */
void bp__pool_init(bp__pool *p, uint32_t helpers, size_t stack_size);
/* Stops and joins the helpers. The pool may not be used afterwards. */
void bp__pool_stop(bp__pool *p);
/* Whether work run on p may be shared with a helper (p may be NULL). */
static inline bool bp__pool_shares(const bp__pool *p) { return p && p->helpers; }
/* Runs fn over chunks 0 .. chunks-1 and returns when every chunk is done. */
void bp__pool_run(bp__pool *p, bp__pool_fn fn, void *ctx, uint64_t chunks);

#endif
