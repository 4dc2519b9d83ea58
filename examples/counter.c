/*
 * counter.c - an event-sourced counter: events record increments and
 * decrements ({"amount": n}, read with the MessagePack reader of
 * batpak/wire.h); a projection folds them into the current value, cached in
 * LMDB so that the next projection only applies what is new. Run it twice in
 * one directory: the second run starts from the first run's cached state,
 * and says how many events each projection actually applied.
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

/* Payloads are MessagePack maps {"amount": n}. ctx counts the events this
 * projection call applied, so that the program can say whether it replayed
 * the history or started from the cached state. */
static bp_status apply(void *state, const bp_event *ev, void *ctx) {
  counter *c = state;
  bp_mp_reader r;
  bp_mp_reader_init(&r, ev->payload, ev->payload_len);
  int64_t amount;
  bp_status st = bp_mp_find_key(&r, "amount");
  if (!st) st = bp_mp_read_int(&r, &amount);
  if (st) return st;
  c->value += ev->header.kind == KIND_ADDED ? (long)amount : -(long)amount;
  c->events++;
  ++*(long *)ctx;
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

/* Projects the counter, saying how many events this call applied. */
static int project(bp_store *s, const char *entity, counter *c, const char *when) {
  bp_freshness fresh = {BP_FRESH_CONSISTENT, 0};
  long applied = 0;
  bp_status st = bp_project(s, entity, &COUNTER, &applied, fresh, c);
  if (st == BP_ENOTFOUND) { /* a new directory: no events yet */
    memset(c, 0, sizeof *c);
    printf("%s: no events yet\n", when);
    return 0;
  }
  if (check(st, "project")) return 1;
  printf("%s: counter = %ld after %ld events (%s)\n", when, c->value, c->events,
         applied == c->events ? "replayed every event"
         : applied == 0       ? "served from the cache"
                              : "the cached state plus the events since");
  return 0;
}

static int append(bp_store *s, const bp_coord *at, bp_kind kind, int amount) {
  char json[48];
  snprintf(json, sizeof json, "{\"amount\": %d}", amount);
  if (check(bp_append_json(s, at, kind, json, NULL), "append")) return 1;
  printf("%s %d\n", kind == KIND_ADDED ? "added" : "removed", amount);
  return 0;
}

int main(int argc, char **argv) {
  bp_config cfg;
  bp_config_init(&cfg, argc > 1 ? argv[1] : "./counter-data");
  cfg.incremental_projection = true;
  bp_store *s;
  if (check(bp_open_with_lmdb_cache(&cfg, &s), "open")) return 1;

  bp_coord clicks = {"counter:clicks", "demo"};
  counter before;
  if (project(s, clicks.entity, &before, "at open")) return 1;
  const struct { bp_kind kind; int amount; } changes[] = {
      {KIND_ADDED, 5}, {KIND_ADDED, 3}, {KIND_REMOVED, 2}, {KIND_ADDED, 10}};
  for (size_t i = 0; i < sizeof changes / sizeof changes[0]; i++)
    if (append(s, &clicks, changes[i].kind, changes[i].amount)) return 1;
  counter c;
  if (project(s, clicks.entity, &c, "after four appends")) return 1;
  if (append(s, &clicks, KIND_ADDED, 1) || project(s, clicks.entity, &c, "after one more")) return 1;
  if (project(s, clicks.entity, &c, "again, nothing new")) return 1;
  if (c.value != before.value + 17 || c.events != before.events + 5) {
    fprintf(stderr, "counter: expected %ld after %ld events\n", before.value + 17, before.events + 5);
    return 1;
  }
  return check(bp_close(s), "close");
}
