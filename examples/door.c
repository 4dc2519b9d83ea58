/*
 * door.c - a typestate door: closed, open and locked are distinct types, and
 * only the declared transitions exist, so an illegal move (locking an open
 * door) does not compile. Each transition is recorded as an event.
 *
 *   door [DATA_DIR]      (default ./door-data)
 */
#include <batpak.h>

#include <stdio.h>

BP_STATE(door, closed);
BP_STATE(door, open);
BP_STATE(door, locked);
BP_TRANSITION(door, closed, open, 0x3001);
BP_TRANSITION(door, open, closed, 0x3002);
BP_TRANSITION(door, closed, locked, 0x3003);
BP_TRANSITION(door, locked, closed, 0x3004);
/* There is no door_open_to_locked: `door_open_to_locked(&o, &l, ...)` is a compile error. */

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
  bp_entries history;
  bp_stream(s, entity, &history);
  printf("%s has %zu events; its hash chain links them in order\n", entity, history.len);
  bp_entries_free(&history);
  return bp_close(s) == BP_OK ? 0 : 1;
}
