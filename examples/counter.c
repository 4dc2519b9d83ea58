/*
 * counter.c - an event-sourced counter: events record increments and
 * decrements; a projection folds them into the current value, cached in LMDB
 * so that the next projection only applies what is new.
 *
 *   counter [DATA_DIR]      (default ./counter-data)
 */
#include <batpak.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { KIND_ADDED = 0x1001, KIND_REMOVED = 0x1002 };

typedef struct counter {
  long value;
  long events;
} counter;

static bp_status init(void *state, void *ctx) {
  (void)ctx;
  memset(state, 0, sizeof(counter));
  return BP_OK;
}

/* Payloads are a single MessagePack positive fixint: the amount. */
static bp_status apply(void *state, const bp_event *ev, void *ctx) {
  (void)ctx;
  counter *c = state;
  long amount = ev->payload_len == 1 ? ev->payload[0] : 0;
  c->value += ev->header.kind == KIND_ADDED ? amount : -amount;
  c->events++;
  return BP_OK;
}

static bp_status encode(const void *state, void **bytes, size_t *len, void *ctx) {
  (void)ctx;
  *bytes = malloc(sizeof(counter));
  if (!*bytes) return BP_ENOMEM;
  memcpy(*bytes, state, sizeof(counter));
  *len = sizeof(counter);
  return BP_OK;
}

static bp_status decode(void *state, const void *bytes, size_t len, void *ctx) {
  (void)ctx;
  if (len != sizeof(counter)) return BP_ESERIAL;
  memcpy(state, bytes, len);
  return BP_OK;
}

static const bp_kind KINDS[] = {KIND_ADDED, KIND_REMOVED};
static const bp_projection COUNTER = {BP_PROJECTION_VERSION, "counter", 1, KINDS, 2, true, init, apply,
                                      encode, decode, NULL};

static int check(bp_status st, const char *what) {
  if (st == BP_OK) return 0;
  fprintf(stderr, "counter: %s: %s (%s)\n", what, bp_status_name(st), bp_last_error()->message);
  return 1;
}

int main(int argc, char **argv) {
  bp_config cfg;
  bp_config_init(&cfg, argc > 1 ? argv[1] : "./counter-data");
  cfg.incremental_projection = true;
  bp_store *s;
  if (check(bp_open_with_lmdb_cache(&cfg, &s), "open")) return 1;

  bp_coord clicks = {"counter:clicks", "demo"};
  const struct { bp_kind kind; uint8_t amount; } changes[] = {
      {KIND_ADDED, 5}, {KIND_ADDED, 3}, {KIND_REMOVED, 2}, {KIND_ADDED, 10}};
  for (size_t i = 0; i < sizeof changes / sizeof changes[0]; i++) {
    bp_append_receipt r;
    if (check(bp_append(s, &clicks, changes[i].kind, &changes[i].amount, 1, &r), "append")) return 1;
    printf("%s %u\n", changes[i].kind == KIND_ADDED ? "added" : "removed", changes[i].amount);
  }
  bp_freshness fresh = {BP_FRESH_CONSISTENT, 0};
  counter c;
  if (check(bp_project(s, clicks.entity, &COUNTER, NULL, fresh, &c), "project")) return 1;
  printf("counter = %ld after %ld events (replayed, then cached)\n", c.value, c.events);

  bp_append_receipt r;
  uint8_t one = 1;
  if (check(bp_append(s, &clicks, KIND_ADDED, &one, 1, &r), "append")) return 1;
  if (check(bp_project(s, clicks.entity, &COUNTER, NULL, fresh, &c), "project")) return 1;
  printf("counter = %ld after %ld events (the cached state plus the one new event)\n", c.value, c.events);
  if (c.value != 17 || c.events != 5) {
    fprintf(stderr, "counter: expected 17 after 5 events\n");
    return 1;
  }
  return check(bp_close(s), "close");
}
