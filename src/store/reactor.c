/*
 * reactor.c - reactors: a thread per reactor that follows a cursor over its
 * region from the head at start, hands each event to the caller's function
 * and appends what it emits (correlated with, and caused by, that event).
 * A subscription serves only as a wake-up, so a reactor never misses an
 * event even when its subscription drops some.
 */
#include "store/store_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

typedef struct emitted {
  bp_coord coord;
  bp_kind kind;
  void *payload;
  size_t len;
} emitted;

struct bp_emitter {
  emitted *items;
  size_t len, cap;
  size_t max_payload;
};

struct bp_reactor {
  bp_store *store;
  bp_cursor *cursor;
  bp_subscription *wake;
  bp_react_fn fn;
  void *ctx;
  pthread_t thread;
  _Atomic bool stop;
  _Atomic uint64_t handled;
};

bp_status bp_emit(bp_emitter *out, const bp_coord *coord, bp_kind kind, const void *payload, size_t len) {
  if (!out || !coord || (!payload && len)) return bp__fail(BP_EINVAL, "bp_emit: NULL argument");
  bp_status st = bp_coord_validate(coord);
  if (!st) st = bp__kind_check_appendable(kind, "bp_emit");
  if (st) return st;
  if (len > out->max_payload) return bp__fail(BP_ELIMIT, "bp_emit: payload of %zu bytes is too large", len);
  if (out->len == out->cap) {
    size_t cap = out->cap ? out->cap * 2 : 4;
    emitted *n = realloc(out->items, cap * sizeof *n);
    if (!n) return bp__fail(BP_ENOMEM, "bp_emit: out of memory");
    out->items = n;
    out->cap = cap;
  }
  emitted *e = &out->items[out->len];
  char *entity = strdup(coord->entity), *scope = strdup(coord->scope);
  void *copy = malloc(len ? len : 1);
  if (!entity || !scope || !copy) {
    free(entity);
    free(scope);
    free(copy);
    return bp__fail(BP_ENOMEM, "bp_emit: out of memory");
  }
  if (len) memcpy(copy, payload, len);
  e->coord.entity = entity;
  e->coord.scope = scope;
  e->kind = kind;
  e->payload = copy;
  e->len = len;
  out->len++;
  return BP_OK;
}

static void emitter_reset(bp_emitter *em) {
  for (size_t i = 0; i < em->len; i++) {
    free((void *)em->items[i].coord.entity);
    free((void *)em->items[i].coord.scope);
    free(em->items[i].payload);
  }
  em->len = 0;
}

static void handle(bp_reactor *r, const bp_entry *src, bp_emitter *em) {
  bp_store *s = r->store;
  bp_event *ev;
  char hex[33];
  bp_status st = bp_get(s, src->event_id, &ev);
  if (st) {
    bp_id_to_hex(src->event_id, hex);
    bp__log(s, BP_LOG_ERROR, "reactor: cannot read event %s: %s", hex, bp_last_error()->message);
    return;
  }
  r->fn(ev, em, r->ctx);
  for (size_t i = 0; i < em->len; i++) {
    emitted *e = &em->items[i];
    bp_append_receipt rc;
    st = bp__append_own(s, &e->coord, e->kind, e->payload, e->len, ev->header.correlation_id, ev->header.event_id,
                        &rc);
    if (st) {
      bp_id_to_hex(ev->header.event_id, hex);
      bp__log(s, BP_LOG_ERROR, "reactor: reaction to %s not appended: %s: %s", hex, bp_status_name(st),
              bp_last_error()->message);
    }
  }
  emitter_reset(em);
  bp_event_free(ev);
  atomic_fetch_add(&r->handled, 1);
}

static void *reactor_main(void *arg) {
  bp_reactor *r = arg;
  bp_emitter em = {NULL, 0, 0, (size_t)r->store->cfg.max_payload_bytes};
  while (!atomic_load(&r->stop)) {
    bp_entries batch;
    if (bp_cursor_poll_batch(r->cursor, 256, &batch) != BP_OK) {
      bp__log(r->store, BP_LOG_ERROR, "reactor: poll failed: %s", bp_last_error()->message);
      batch.len = 0;
    }
    for (size_t i = 0; i < batch.len && !atomic_load(&r->stop); i++) handle(r, &batch.items[i], &em);
    bool idle = batch.len == 0;
    bp_entries_free(&batch);
    if (idle) {
      /* Sleep until something is appended (or a short while passes: the
       * subscription may have dropped the very notification). */
      bp_notification n;
      while (bp_sub_recv(r->wake, &n, 0) == BP_OK) {
      }
      if (bp_cursor_behind(r->cursor) == 0) (void)bp_sub_recv(r->wake, &n, 50);
    }
  }
  emitter_reset(&em);
  free(em.items);
  return NULL;
}

bp_reactor *bp_react_loop(bp_store *s, const bp_region *region, bp_react_fn fn, void *ctx) {
  if (!s || !region || !fn) {
    bp__fail(BP_EINVAL, "bp_react_loop: NULL argument");
    return NULL;
  }
  if (s->readonly) {
    bp__fail(BP_EREADONLY, "bp_react_loop: the store is read-only");
    return NULL;
  }
  bp_reactor *r = calloc(1, sizeof *r);
  if (!r) {
    bp__fail(BP_ENOMEM, "out of memory for a reactor");
    return NULL;
  }
  r->store = s;
  r->fn = fn;
  r->ctx = ctx;
  r->wake = bp_subscribe(s, region);
  r->cursor = bp_cursor_open(s, region);
  if (!r->wake || !r->cursor) goto fail;
  bp_cursor_seek(r->cursor, bp__index_visible(&s->ix));
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  if (s->cfg.writer_stack_size) pthread_attr_setstacksize(&attr, s->cfg.writer_stack_size);
  int rc = pthread_create(&r->thread, &attr, reactor_main, r);
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    bp__fail_errno(BP_EIO, rc, "bp_react_loop: cannot start a thread");
    goto fail;
  }
  return r;
fail:
  bp_sub_close(r->wake);
  bp_cursor_close(r->cursor);
  free(r);
  return NULL;
}

uint64_t bp_reactor_handled(const bp_reactor *r) { return r ? atomic_load(&r->handled) : 0; }

void bp_reactor_stop(bp_reactor *r) {
  if (!r) return;
  atomic_store(&r->stop, true);
  pthread_join(r->thread, NULL);
  bp_sub_close(r->wake);
  bp_cursor_close(r->cursor);
  free(r);
}
