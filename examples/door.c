/*
 * door.c - a typestate door: closed, open and locked are distinct types, and
 * only the declared transitions exist, so an illegal move (locking an open
 * door) is rejected by the compiler: an error with -Werror, as this project
 * builds (with GCC 12's and Clang 14's default warnings it is a warning about
 * an implicit declaration or incompatible pointer types, then a link error).
 * Each transition is recorded as an event, and the door's hash chain is then
 * checked link by link.
 *
 *   door [DATA_DIR]      (default ./door-data)
 */
#include <batpak.h>

#include <stdint.h>
#include <stdio.h>
#include <string.h>

BP_STATE(door, closed);
BP_STATE(door, open);
BP_STATE(door, locked);
BP_TRANSITION(door, closed, open, 0x3001);
BP_TRANSITION(door, open, closed, 0x3002);
BP_TRANSITION(door, closed, locked, 0x3003);
BP_TRANSITION(door, locked, closed, 0x3004);
/* There is no door_open_to_locked: `door_open_to_locked(&o, &l, ...)` is
 * rejected (see above; tests/compile_fail holds such programs). */

BP_DEFINE_ENTITY_ID(door_id, "door");

int main(int argc, char **argv) {
  bp_config cfg;
  bp_config_init(&cfg, argc > 1 ? argv[1] : "./door-data");
  bp_store *s;
  if (bp_open(&cfg, &s) != BP_OK) {
    fprintf(stderr, "door: %s\n", bp_last_error()->message);
    return 1;
  }
  door_id id = door_id_now_v7();
  char entity[door_id_TEXT_LEN];
  door_id_entity(id, entity);
  bp_coord where = {entity, "house"};

  door_closed closed = door_closed_at(id.id);
  door_open open;
  door_locked locked;
  bp_append_receipt r;
  bp_transition steps[4];
  steps[0] = door_closed_to_open(&closed, &open, "\xa4open", 5);
  steps[1] = door_open_to_closed(&open, &closed, "\xa5" "close", 6);
  steps[2] = door_closed_to_locked(&closed, &locked, "\xa4lock", 5);
  steps[3] = door_locked_to_closed(&locked, &closed, "\xa6unlock", 7);
  for (int i = 0; i < 4; i++) {
    if (bp_apply_transition(s, &where, &steps[i], NULL, &r) != BP_OK) {
      fprintf(stderr, "door: %s\n", bp_last_error()->message);
      return 1;
    }
    char kind[7];
    bp_kind_format(steps[i].kind, kind);
    printf("%s: transition %s recorded at sequence %llu\n", entity, kind, (unsigned long long)r.sequence);
  }
  /* The chain, checked: each event's hash is the BLAKE3 of its payload and
   * its prev_hash the previous event's hash (bp_walk_ancestors reads every
   * event back and fails BP_ECORRUPT at a broken link), from the last
   * transition back to the first, whose prev_hash is all zeros. */
  bp_events chain;
  if (bp_walk_ancestors(s, r.event_id, SIZE_MAX, &chain) != BP_OK) {
    fprintf(stderr, "door: hash chain: %s\n", bp_last_error()->message);
    bp_close(s);
    return 1;
  }
  static const uint8_t zeros[32];
  bool linked = chain.len == 4 && memcmp(chain.items[chain.len - 1]->hash_chain.prev_hash, zeros, 32) == 0;
  for (size_t i = 0; linked && i + 1 < chain.len; i++)
    linked = memcmp(chain.items[i]->hash_chain.prev_hash, chain.items[i + 1]->hash_chain.event_hash, 32) == 0;
  printf("%s has %zu events; hash chain %s\n", entity, chain.len, linked ? "verified link by link" : "BROKEN");
  bp_events_free(&chain);
  return bp_close(s) == BP_OK && linked ? 0 : 1;
}
