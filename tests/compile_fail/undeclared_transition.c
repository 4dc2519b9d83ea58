/* An illegal transition (one that was never declared) does not compile.
 * With -DCONTROL the legal transition is used instead, and it must compile. */
#include <batpak.h>

BP_STATE(door, closed);
BP_STATE(door, open);
BP_STATE(door, locked);
BP_TRANSITION(door, closed, open, 0x2001);

int main(void) {
  door_closed c = door_closed_at(bp_id_v7());
  door_open o;
  door_locked l;
#ifdef CONTROL
  bp_transition t = door_closed_to_open(&c, &o, "", 0);
  (void)l;
#else
  bp_transition t = door_open_to_locked(&o, &l, "", 0); /* open -> locked was never declared */
  (void)c;
#endif
  (void)t;
  return 0;
}
