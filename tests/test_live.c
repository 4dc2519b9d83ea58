/*
 * test_live.c - subscriptions and reactors.
 */
#include "testutil.h"

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

typedef tu_store_fixture fixture;
#define setup tu_store_setup
#define teardown tu_store_teardown

static bp_store *open_ok(fixture *f) {
  bp_store *s;
  assert_ok(bp_open(&f->cfg, &s));
  return s;
}

static bp_append_receipt put(bp_store *s, const char *entity, const char *scope, bp_kind kind) {
  bp_coord c = {entity, scope};
  bp_append_receipt r;
  assert_ok(bp_append(s, &c, kind, "\xc0", 1, &r));
  return r;
}

static void subscription_receives_matching_events_in_order(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  put(s, "user:1", "a", 0x1001); /* before subscribing: not delivered */
  bp_region r = bp_region_with_scope(bp_region_entity("user:"), "a");
  bp_subscription *sub = bp_subscribe(s, &r);
  assert_non_null(sub);
  bp_append_receipt r1 = put(s, "user:1", "a", 0x1001);
  put(s, "order:1", "a", 0x1001);  /* other entity */
  put(s, "user:2", "b", 0x1001);   /* other scope */
  bp_append_receipt r2 = put(s, "user:2", "a", 0xF001);
  bp_notification n;
  assert_ok(bp_sub_recv(sub, &n, 1000));
  assert_true(bp_id_eq(n.event_id, r1.event_id));
  assert_string_equal(n.entity, "user:1");
  assert_int_equal(n.sequence, 1);
  assert_ok(bp_sub_recv(sub, &n, 1000));
  assert_true(bp_id_eq(n.event_id, r2.event_id));
  assert_int_equal(n.kind, 0xF001);
  assert_status(bp_sub_recv(sub, &n, 0), BP_ETIMEOUT);
  assert_status(bp_sub_recv(sub, &n, 20), BP_ETIMEOUT);
  bp_sub_close(sub);
  assert_ok(bp_close(s));
}

static void full_queue_drops_and_counts_without_blocking_the_writer(void **state) {
  fixture *f = *state;
  f->cfg.broadcast_capacity = 4;
  bp_store *s = open_ok(f);
  bp_region all = bp_region_all();
  bp_subscription *slow = bp_subscribe(s, &all);
  for (int i = 0; i < 10; i++) put(s, "e", "s", 0x1001);
  assert_int_equal(bp_sub_dropped(slow), 6);
  bp_notification n;
  for (int i = 0; i < 4; i++) {
    assert_ok(bp_sub_recv(slow, &n, 0));
    assert_int_equal(n.sequence, i); /* the oldest are kept */
  }
  assert_status(bp_sub_recv(slow, &n, 0), BP_ETIMEOUT);
  bp_sub_close(slow);
  assert_ok(bp_close(s));
}

static void subscription_fd_is_readable_exactly_while_notifications_wait(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  bp_region all = bp_region_all();
  bp_subscription *sub = bp_subscribe(s, &all);
  int fd = bp_sub_fd(sub);
  assert_true(fd >= 0);
  struct pollfd p = {fd, POLLIN, 0};
  assert_int_equal(poll(&p, 1, 0), 0);
  put(s, "e", "s", 0x1001);
  put(s, "e", "s", 0x1001);
  assert_int_equal(poll(&p, 1, 1000), 1);
  bp_notification n;
  assert_ok(bp_sub_recv(sub, &n, 0));
  assert_int_equal(poll(&p, 1, 0), 1); /* one still waits */
  assert_ok(bp_sub_recv(sub, &n, 0));
  assert_int_equal(poll(&p, 1, 0), 0);
  bp_sub_close(sub);
  assert_ok(bp_close(s));
}

static bool only_kind_f(const bp_notification *n, void *ctx) {
  (void)ctx;
  return bp_kind_category(n->kind) == 0xF;
}

static void rename_entity(bp_notification *n, void *ctx) { n->entity = ctx; }

static void filter_map_and_take_chain_at_receive(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  bp_region all = bp_region_all();
  bp_subscription *sub = bp_sub_take(bp_sub_map(bp_sub_filter(bp_subscribe(s, &all), only_kind_f, NULL),
                                                rename_entity, "mapped"),
                                     2);
  for (int i = 0; i < 6; i++) put(s, "e", "s", i % 2 ? 0xF001 : 0x1001);
  bp_notification n;
  assert_ok(bp_sub_recv(sub, &n, 0));
  assert_int_equal(n.sequence, 1);
  assert_string_equal(n.entity, "mapped");
  assert_ok(bp_sub_recv(sub, &n, 0));
  assert_int_equal(n.sequence, 3);
  assert_status(bp_sub_recv(sub, &n, 0), BP_ECLOSED); /* took 2 */
  bp_sub_close(sub);
  assert_ok(bp_close(s));
}

typedef struct waiter {
  bp_subscription *sub;
  bp_status st;
} waiter;

static void *wait_forever(void *p) {
  waiter *w = p;
  bp_notification n;
  w->st = bp_sub_recv(w->sub, &n, -1);
  return NULL;
}

static void close_wakes_receivers_with_eclosed(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  bp_region all = bp_region_all();
  waiter w = {bp_subscribe(s, &all), BP_OK};
  pthread_t t;
  pthread_create(&t, NULL, wait_forever, &w);
  usleep(20000);
  assert_ok(bp_close(s));
  pthread_join(t, NULL);
  assert_int_equal(w.st, BP_ECLOSED);
  bp_notification n;
  assert_status(bp_sub_recv(w.sub, &n, 0), BP_ECLOSED);
  bp_sub_close(w.sub); /* after the store: still fine */
}

static void closed_subscriptions_are_pruned_by_the_writer(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  bp_region all = bp_region_all();
  for (int i = 0; i < 50; i++) bp_sub_close(bp_subscribe(s, &all));
  bp_subscription *live = bp_subscribe(s, &all);
  put(s, "e", "s", 0x1001);
  bp_notification n;
  assert_ok(bp_sub_recv(live, &n, 0));
  bp_sub_close(live);
  assert_ok(bp_close(s));
}

/* ---------------------------------------------------------------- reactors */

typedef struct chain_ctx {
  const char *from_entity, *to_entity;
  bp_kind to_kind;
} chain_ctx;

static void forward(const bp_event *ev, bp_emitter *out, void *ctx) {
  chain_ctx *c = ctx;
  if (strcmp(ev->entity, c->from_entity) != 0) return;
  bp_coord to = {c->to_entity, "chain"};
  assert_ok(bp_emit(out, &to, c->to_kind, ev->payload, ev->payload_len));
}

/* The entity's stream once it holds an event (a reactor appends on its own
 * thread), or as it is after two seconds. */
static bp_entries stream_when_there(bp_store *s, const char *entity) {
  bp_entries got = {0};
  for (int tries = 0; tries < 400; tries++) {
    assert_ok(bp_stream(s, entity, &got));
    if (got.len || tries == 399) break;
    bp_entries_free(&got);
    usleep(5000);
  }
  return got;
}

/* A -> B -> C: reactions carry the source's correlation and the source as cause. */
static void reactor_chain_carries_correlation_and_causation(void **state) {
  fixture *f = *state;
  bp_store *s = open_ok(f);
  bp_region chain = bp_region_scope("chain");
  chain_ctx ab = {"a", "b", 0x1002}, bc = {"b", "c", 0x1003};
  bp_reactor *r1 = bp_react_loop(s, &chain, forward, &ab);
  bp_reactor *r2 = bp_react_loop(s, &chain, forward, &bc);
  assert_non_null(r1);
  assert_non_null(r2);
  bp_coord a = {"a", "chain"};
  bp_append_receipt src;
  assert_ok(bp_append(s, &a, 0x1001, "\x2a", 1, &src));
  bp_entries got = stream_when_there(s, "c");
  assert_int_equal(got.len, 1);
  bp_entries bs;
  assert_ok(bp_stream(s, "b", &bs));
  assert_int_equal(bs.len, 1);
  assert_true(bp_id_eq(bs.items[0].correlation_id, src.event_id));
  assert_true(bp_id_eq(bs.items[0].causation_id, src.event_id));
  assert_true(bp_id_eq(got.items[0].correlation_id, src.event_id));
  assert_true(bp_id_eq(got.items[0].causation_id, bs.items[0].event_id));
  bp_event *ev;
  assert_ok(bp_get(s, got.items[0].event_id, &ev));
  assert_int_equal(ev->payload[0], 0x2a);
  bp_event_free(ev);
  bp_entries_free(&bs);
  bp_entries_free(&got);
  bp_reactor_stop(r1);
  bp_reactor_stop(r2);
  assert_ok(bp_close(s));
}

static void count_event(const bp_event *ev, bp_emitter *out, void *ctx) {
  (void)ev;
  (void)out;
  atomic_fetch_add((_Atomic int *)ctx, 1);
}

/* The reactor follows a cursor: with a one-slot subscription queue it still
 * sees every event. */
static void reactor_misses_nothing_when_its_wakeups_drop(void **state) {
  fixture *f = *state;
  f->cfg.broadcast_capacity = 1;
  bp_store *s = open_ok(f);
  _Atomic int seen = 0;
  bp_region all = bp_region_all();
  bp_reactor *r = bp_react_loop(s, &all, count_event, &seen);
  for (int i = 0; i < 500; i++) put(s, "e", "s", 0x1001);
  for (int tries = 0; tries < 400 && bp_reactor_handled(r) < 500; tries++) usleep(5000);
  assert_int_equal(bp_reactor_handled(r), 500);
  assert_int_equal(atomic_load(&seen), 500);
  bp_reactor_stop(r);
  assert_ok(bp_close(s));
}

static void emit_bad(const bp_event *ev, bp_emitter *out, void *ctx) {
  (void)ev;
  int *results = ctx;
  static uint8_t big[200];
  bp_coord c = {"x", "y"}, bad = {"", "y"};
  results[0] = bp_emit(out, &c, 0x1001, big, sizeof big); /* over max_payload_bytes */
  results[1] = bp_emit(out, &bad, 0x1001, big, 1);       /* empty entity */
}

/* A reaction with bad input is refused by bp_emit itself, on the reactor's
 * thread, and nothing is appended. */
static void bad_reactions_are_refused_at_emit(void **state) {
  fixture *f = *state;
  f->cfg.max_payload_bytes = 100;
  bp_store *s = open_ok(f);
  bp_region all = bp_region_all();
  int results[2] = {-1, -1};
  bp_reactor *r = bp_react_loop(s, &all, emit_bad, results);
  put(s, "e", "s", 0x1001);
  for (int tries = 0; tries < 400 && bp_reactor_handled(r) < 1; tries++) usleep(5000);
  assert_int_equal(bp_reactor_handled(r), 1);
  bp_reactor_stop(r);
  assert_int_equal(results[0], BP_ELIMIT);
  assert_int_equal(results[1], BP_ECOORD);
  bp_store_stats st;
  bp_stats(s, &st);
  assert_int_equal(st.event_count, 1);
  assert_ok(bp_close(s));
}

/* With group commit every append needs an idempotency key; the reactor
 * appends reactions itself, so it supplies theirs. */
static void reactor_appends_reactions_to_a_group_commit_store(void **state) {
  fixture *f = *state;
  f->cfg.group_commit_max_batch = 8;
  bp_store *s = open_ok(f);
  bp_region chain = bp_region_scope("chain");
  chain_ctx ab = {"a", "b", 0x1002};
  bp_reactor *r = bp_react_loop(s, &chain, forward, &ab);
  assert_non_null(r);
  bp_coord a = {"a", "chain"};
  bp_append_options o;
  memset(&o, 0, sizeof o);
  o.idempotency_key = bp_id_v7();
  bp_append_receipt src;
  assert_ok(bp_append_with(s, &a, 0x1001, "\x2a", 1, &o, &src));
  bp_entries bs = stream_when_there(s, "b");
  bp_reactor_stop(r);
  if (bs.len != 1) fail_msg("%zu reactions appended, want 1", bs.len);
  assert_true(bp_id_eq(bs.items[0].causation_id, src.event_id));
  bp_entries_free(&bs);
  assert_ok(bp_close(s));
}

/* 64 subscribers, one of which never reads: the writer finishes every append,
 * the slow one drops (and counts) what did not fit, the others get everything. */
static void fan_out_to_many_subscribers_with_a_slow_one(void **state) {
  fixture *f = *state;
  f->cfg.broadcast_capacity = 256;
  bp_store *s = open_ok(f);
  bp_region all = bp_region_all();
  bp_subscription *subs[64];
  for (int i = 0; i < 64; i++) subs[i] = bp_subscribe(s, &all);
  const int n = 1000;
  for (int i = 0; i < n; i++) {
    put(s, "e", "s", 0x1001);
    if (i % 100 == 99) /* the 63 fast ones keep up */
      for (int k = 1; k < 64; k++) {
        bp_notification note;
        while (bp_sub_recv(subs[k], &note, 0) == BP_OK) {
        }
      }
  }
  assert_int_equal(bp_sub_dropped(subs[0]), n - 256);
  for (int k = 1; k < 64; k++) assert_int_equal(bp_sub_dropped(subs[k]), 0);
  bp_notification note;
  assert_ok(bp_sub_recv(subs[0], &note, 0));
  assert_int_equal(note.sequence, 0);
  for (int i = 0; i < 64; i++) bp_sub_close(subs[i]);
  assert_ok(bp_close(s));
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(subscription_receives_matching_events_in_order),
      T(full_queue_drops_and_counts_without_blocking_the_writer),
      T(subscription_fd_is_readable_exactly_while_notifications_wait),
      T(filter_map_and_take_chain_at_receive),
      T(close_wakes_receivers_with_eclosed),
      T(closed_subscriptions_are_pruned_by_the_writer),
      T(fan_out_to_many_subscribers_with_a_slow_one),
      T(reactor_chain_carries_correlation_and_causation),
      T(reactor_misses_nothing_when_its_wakeups_drop),
      T(bad_reactions_are_refused_at_emit),
      T(reactor_appends_reactions_to_a_group_commit_store),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
