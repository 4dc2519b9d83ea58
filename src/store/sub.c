/*
 * sub.c - subscriptions (lossy push). Reactors, which follow a cursor and use
 * a subscription as a wake-up, are in reactor.c.
 *
 * Concurrency essay
 * -----------------
 * The store keeps its subscriptions in a list under sub_lock. After the
 * writer publishes a group of events (so every reader can already see them),
 * it hands each event to each open subscription whose region matches:
 * taking the subscription's own lock for a constant-time push into its ring,
 * never waiting for space (a full ring drops and counts). Receivers wait on
 * the subscription's condition variable; an eventfd mirrors "the ring is not
 * empty" for poll/epoll.
 *
 * A subscription is owned by two parties, the caller and the store. Each
 * drops its reference (bp_sub_close; the writer pruning a closed subscription
 * or bp_close), and the last one frees it. After bp_close a subscription only
 * answers BP_ECLOSED: the strings of queued notifications died with the store.
 *
 */
#include "store/store_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

typedef enum op_kind { OP_FILTER, OP_MAP, OP_TAKE } op_kind;

typedef struct sub_op {
  op_kind kind;
  bool (*pred)(const bp_notification *, void *);
  void (*map)(bp_notification *, void *);
  void *ctx;
  uint64_t left;               /* OP_TAKE */
} sub_op;

struct bp_subscription {
  struct bp_subscription *next; /* in the store's list (sub_lock) */
  bp_store *store;
  bp_region region;
  char *prefix, *scope;
  pthread_mutex_t lock;
  pthread_cond_t ready;
  bp_notification *ring;
  uint32_t cap, head, len;
  _Atomic uint64_t dropped;
  int efd;
  bool closed;                 /* the caller closed it */
  bool store_closed;
  bool ended;                  /* a take limit was reached, or an operation was lost */
  bool op_lost;                /* an operation could not be added (out of memory) */
  int refs;                    /* caller + store */
  int waiting;                 /* receivers blocked in bp_sub_recv */
  sub_op *ops;
  size_t nops;
};

static void sub_unref(bp_subscription *sub) {
  pthread_mutex_lock(&sub->lock);
  bool last = --sub->refs == 0;
  pthread_mutex_unlock(&sub->lock);
  if (!last) return;
  if (sub->efd >= 0) close(sub->efd);
  pthread_mutex_destroy(&sub->lock);
  pthread_cond_destroy(&sub->ready);
  free(sub->ring);
  free(sub->prefix);
  free(sub->scope);
  free(sub->ops);
  free(sub);
}

bp_subscription *bp__subscribe(bp_store *s, const bp_region *r) {
  if (!s || !r) {
    bp__fail(BP_EINVAL, "bp_subscribe: NULL argument");
    return NULL;
  }
  bp_subscription *sub = calloc(1, sizeof *sub);
  if (!sub) goto oom;
  sub->store = s;
  sub->region = *r;
  sub->cap = s->cfg.broadcast_capacity;
  sub->ring = malloc(sizeof *sub->ring * sub->cap);
  sub->prefix = r->entity_prefix ? strdup(r->entity_prefix) : NULL;
  sub->scope = r->scope ? strdup(r->scope) : NULL;
  if (!sub->ring || (r->entity_prefix && !sub->prefix) || (r->scope && !sub->scope)) {
    free(sub->ring);
    free(sub->prefix);
    free(sub->scope);
    free(sub);
    goto oom;
  }
  sub->region.entity_prefix = sub->prefix;
  sub->region.scope = sub->scope;
  sub->efd = -1; /* made by bp_sub_fd, for callers that poll: others pay no system calls */
  pthread_mutex_init(&sub->lock, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&sub->ready, &ca);
  pthread_condattr_destroy(&ca);
  sub->refs = 2;
  pthread_mutex_lock(&s->sub_lock);
  sub->next = s->subs;
  s->subs = sub;
  atomic_fetch_add(&s->nsubs, 1);
  pthread_mutex_unlock(&s->sub_lock);
  return sub;
oom:
  bp__fail(BP_ENOMEM, "out of memory for a subscription");
  return NULL;
}

/* eventfd mirrors "not empty": raised on the first push, cleared when drained. */
static void fd_raise(bp_subscription *sub) {
  if (sub->efd >= 0) {
    uint64_t one = 1;
    ssize_t w = write(sub->efd, &one, sizeof one);
    (void)w;
  }
}

static void fd_clear(bp_subscription *sub) {
  if (sub->efd >= 0) {
    uint64_t v;
    ssize_t r = read(sub->efd, &v, sizeof v);
    (void)r;
  }
}

/* Writer side: called with the commit lock held after events [from, to) were
 * published. Never blocks on a subscriber. */
void bp__notify(bp_store *s, uint64_t from, uint64_t to) {
  if (atomic_load_explicit(&s->nsubs, memory_order_acquire) == 0) return;
  pthread_mutex_lock(&s->sub_lock);
  bp_subscription **link = &s->subs;
  while (*link) {
    bp_subscription *sub = *link;
    pthread_mutex_lock(&sub->lock);
    bool gone = sub->closed;
    if (!gone) {
      for (uint64_t seq = from; seq < to; seq++) {
        const bp__ientry *e = bp__index_at(&s->ix, seq);
        const char *entity = bp__index_name(&s->ix, e->entity)->str;
        const char *scope = bp__index_name(&s->ix, e->scope)->str;
        if (!bp_region_matches_event(&sub->region, entity, scope, e->kind)) continue;
        if (sub->len == sub->cap) {
          atomic_fetch_add_explicit(&sub->dropped, 1, memory_order_relaxed);
          continue;
        }
        bp_notification *n = &sub->ring[(sub->head + sub->len) % sub->cap];
        n->event_id = e->event_id;
        n->correlation_id = e->correlation_id;
        n->causation_id = e->causation_id;
        n->entity = entity;
        n->scope = scope;
        n->kind = e->kind;
        n->sequence = seq;
        n->reserved[0] = n->reserved[1] = 0;
        if (sub->len++ == 0) fd_raise(sub);
      }
      if (sub->len && sub->waiting) pthread_cond_signal(&sub->ready);
    }
    pthread_mutex_unlock(&sub->lock);
    if (gone) {
      /* Closed by its caller: prune it and drop the store's reference. */
      *link = sub->next;
      atomic_fetch_sub(&s->nsubs, 1);
      sub_unref(sub);
    } else {
      link = &sub->next;
    }
  }
  pthread_mutex_unlock(&s->sub_lock);
}

/* bp_close: every subscription ends; the store lets go of them. */
void bp__subs_close(bp_store *s) {
  pthread_mutex_lock(&s->sub_lock);
  bp_subscription *sub = s->subs;
  s->subs = NULL;
  atomic_store(&s->nsubs, 0);
  pthread_mutex_unlock(&s->sub_lock);
  while (sub) {
    bp_subscription *next = sub->next;
    pthread_mutex_lock(&sub->lock);
    sub->store_closed = true;
    sub->len = 0;
    fd_raise(sub); /* readable: the receiver will learn BP_ECLOSED */
    pthread_cond_broadcast(&sub->ready);
    pthread_mutex_unlock(&sub->lock);
    sub_unref(sub);
    sub = next;
  }
}

static void deadline_after(struct timespec *t, int ms) {
  clock_gettime(CLOCK_MONOTONIC, t);
  t->tv_sec += ms / 1000;
  t->tv_nsec += (long)(ms % 1000) * 1000000;
  if (t->tv_nsec >= 1000000000) {
    t->tv_sec++;
    t->tv_nsec -= 1000000000;
  }
}

bp_status bp_sub_recv(bp_subscription *sub, bp_notification *out, int timeout_ms) {
  if (!sub || !out) return bp__fail(BP_EINVAL, "bp_sub_recv: NULL argument");
  struct timespec until;
  if (timeout_ms > 0) deadline_after(&until, timeout_ms);
  pthread_mutex_lock(&sub->lock);
  bp_status st = BP_OK;
  for (;;) {
    if (sub->op_lost) {
      st = bp__fail(BP_ENOMEM, "subscription: ended, an operation could not be added (out of memory)");
      break;
    }
    if (sub->store_closed || sub->ended || sub->closed) {
      st = bp__fail(BP_ECLOSED, sub->ended ? "subscription: take limit reached" : "subscription: the store is closed");
      break;
    }
    if (sub->len == 0) {
      if (timeout_ms == 0) { st = bp__fail(BP_ETIMEOUT, "subscription: nothing waiting"); break; }
      sub->waiting++;
      int rc = timeout_ms < 0 ? pthread_cond_wait(&sub->ready, &sub->lock)
                              : pthread_cond_timedwait(&sub->ready, &sub->lock, &until);
      sub->waiting--;
      if (rc == ETIMEDOUT && sub->len == 0) { st = bp__fail(BP_ETIMEOUT, "subscription: timed out"); break; }
      continue;
    }
    bp_notification n = sub->ring[sub->head];
    sub->head = (sub->head + 1) % sub->cap;
    if (--sub->len == 0) fd_clear(sub);
    /* The chain: filters may reject, maps rewrite, takes count down. */
    bool pass = true;
    for (size_t i = 0; i < sub->nops && pass; i++) {
      sub_op *op = &sub->ops[i];
      if (op->kind == OP_FILTER) pass = op->pred(&n, op->ctx);
      else if (op->kind == OP_MAP) op->map(&n, op->ctx);
      else if (op->left == 0) { sub->ended = true; pass = false; }
      else if (--op->left == 0) sub->ended = true;
    }
    if (pass) {
      *out = n;
      break;
    }
  }
  pthread_mutex_unlock(&sub->lock);
  return st;
}

int bp_sub_fd(bp_subscription *sub) {
  if (!sub) return -1;
  pthread_mutex_lock(&sub->lock);
  if (sub->efd < 0) {
    sub->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (sub->len > 0 || sub->store_closed) fd_raise(sub);
  }
  int fd = sub->efd;
  pthread_mutex_unlock(&sub->lock);
  return fd;
}

uint64_t bp_sub_dropped(const bp_subscription *sub) { return atomic_load(&sub->dropped); }

static bp_subscription *add_op(bp_subscription *sub, sub_op op) {
  if (!sub) return NULL;
  pthread_mutex_lock(&sub->lock);
  sub_op *ops = realloc(sub->ops, sizeof *ops * (sub->nops + 1));
  if (ops) {
    sub->ops = ops;
    sub->ops[sub->nops++] = op;
  } else {
    /* Without the operation the stream would be wrong: end it instead, and
     * say why at the next receive (the caller keeps a valid handle). */
    sub->ended = sub->op_lost = true;
    bp__fail(BP_ENOMEM, "subscription: out of memory adding an operation; the subscription has ended");
  }
  pthread_mutex_unlock(&sub->lock);
  return sub;
}

bp_subscription *bp_sub_filter(bp_subscription *sub, bool (*pred)(const bp_notification *, void *), void *ctx) {
  return add_op(sub, (sub_op){OP_FILTER, pred, NULL, ctx, 0});
}

bp_subscription *bp_sub_map(bp_subscription *sub, void (*fn)(bp_notification *, void *), void *ctx) {
  return add_op(sub, (sub_op){OP_MAP, NULL, fn, ctx, 0});
}

bp_subscription *bp_sub_take(bp_subscription *sub, uint64_t n) {
  if (sub && n == 0) {
    pthread_mutex_lock(&sub->lock);
    sub->ended = true;
    pthread_mutex_unlock(&sub->lock);
    return sub;
  }
  return add_op(sub, (sub_op){OP_TAKE, NULL, NULL, NULL, n});
}

void bp_sub_close(bp_subscription *sub) {
  if (!sub) return;
  pthread_mutex_lock(&sub->lock);
  sub->closed = true;
  pthread_cond_broadcast(&sub->ready);
  pthread_mutex_unlock(&sub->lock);
  sub_unref(sub);
}
