/*
 * quickstart.c - a first look at batpak for C.
 *
 *   quickstart [DATA_DIR]      (default ./batpak-data)
 *
 * Opens (or creates) a store, appends three events for one bank account,
 * reads them back, checks the account's hash chain, and shows that a bad
 * append is refused with a clear error. Run it twice: the second run finds the
 * first run's events and continues the same chain.
 */
#include <batpak.h>

#include <stdio.h>
#include <string.h>

static int check(bp_status st, const char *what) {
  if (st == BP_OK) return 0;
  fprintf(stderr, "quickstart: %s failed: %s (%s)\n", what, bp_status_name(st), bp_last_error()->message);
  return 1;
}

int main(int argc, char **argv) {
  const char *data_dir = argc > 1 ? argv[1] : "./batpak-data";
  printf("batpak %s\n", bp_version());

  bp_config cfg;
  bp_config_init(&cfg, data_dir);
  bp_store *store;
  if (check(bp_open(&cfg, &store), "bp_open")) return 1;
  bp_store_stats stats;
  bp_stats(store, &stats);
  printf("opened %s: %llu events already stored\n", data_dir, (unsigned long long)stats.event_count);

  /* A kind is a 4-bit category over a 12-bit type; categories 0x0 and 0xD are reserved. */
  bp_kind deposited;
  if (check(bp_kind_custom(0x1, 0x001, &deposited), "bp_kind_custom")) return 1;
  char kind_text[7];
  bp_kind_format(deposited, kind_text);

  bp_coord account = {"account:42", "bank"};
  const char *deposits[] = {"{\"amount\": 100}", "{\"amount\": 250, \"memo\": \"salary\"}",
                            "{\"amount\": -40}"};
  for (int i = 0; i < 3; i++) {
    bp_append_receipt r;
    if (check(bp_append_json(store, &account, deposited, deposits[i], &r), "bp_append_json")) return 1;
    char id[37];
    bp_id_to_uuid(r.event_id, id);
    printf("appended %s %s to %s@%s: id %s, global sequence %llu\n", kind_text, deposits[i],
           account.entity, account.scope, id, (unsigned long long)r.sequence);
  }

  /* The account's stream, oldest first; every event links to the one before. */
  bp_entries stream;
  if (check(bp_stream(store, account.entity, &stream), "bp_stream")) return 1;
  uint8_t prev[32] = {0};
  size_t verified = 0;
  for (size_t i = 0; i < stream.len; i++) {
    bp_event *ev;
    if (check(bp_get(store, stream.items[i].event_id, &ev), "bp_get")) return 1;
    if (bp_verify_chain(ev->payload, ev->payload_len, &ev->hash_chain, prev)) verified++;
    memcpy(prev, ev->hash_chain.event_hash, 32);
    if (i + 3 >= stream.len) {
      char *json = bp_event_payload_json(ev);
      printf("  clock %u: %s\n", ev->header.position.sequence, json ? json : "(not MessagePack)");
      bp_free(json);
    }
    bp_event_free(ev);
  }
  printf("%s has %zu events; hash chain verified for %zu of them\n", account.entity, stream.len, verified);
  size_t n = stream.len;
  bp_entries_free(&stream);

  /* Optimistic concurrency: expecting a stale sequence is refused, nothing written. */
  bp_append_options opts;
  memset(&opts, 0, sizeof opts);
  opts.expect = BP_EXPECT_SEQUENCE;
  opts.expected_sequence = 0;
  bp_append_receipt r;
  bp_status st = bp_append_with(store, &account, deposited, "\xc0", 1, &opts, &r);
  printf("append expecting sequence 0 -> %s: %s\n", bp_status_name(st), bp_last_error()->message);

  /* Bad input is refused with a code and a message, and leaves the store as it was. */
  bp_coord nobody = {"", "bank"};
  st = bp_append(store, &nobody, deposited, "\xc0", 1, &r);
  printf("append with an empty entity -> %s: %s\n", bp_status_name(st), bp_last_error()->message);

  if (check(bp_close(store), "bp_close")) return 1;
  printf("closed; the next run will find %zu events for %s\n", n, account.entity);
  return verified == n ? 0 : 1;
}
