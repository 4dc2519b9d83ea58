/* A declared transition applied to a value of the wrong state does not compile. */
#include <batpak.h>

BP_STATE(door, closed);
BP_STATE(door, open);
BP_TRANSITION(door, closed, open, 0x2001);

int main(void) {
  door_closed c = door_closed_at(bp_id_v7());
  door_open o = door_open_at(bp_id_v7()), o2;
#ifdef CONTROL
  bp_transition t = door_closed_to_open(&c, &o2, "", 0);
  (void)o;
#else
  bp_transition t = door_closed_to_open(&o, &o2, "", 0); /* an open door is not a closed one */
  (void)c;
#endif
  (void)t;
  return 0;
}
