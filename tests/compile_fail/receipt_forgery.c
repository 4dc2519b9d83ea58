/* A receipt cannot be made outside the library: its type is incomplete. */
#include <batpak.h>

int main(void) {
#ifdef CONTROL
  bp_receipt *r = NULL; /* a pointer to one, as handed out by a gate set, is fine */
  (void)r;
#else
  bp_receipt forged; /* an object of an incomplete type */
  (void)forged;
#endif
  return 0;
}
