/* Typed entity ids of different entities do not mix. */
#include <batpak.h>

BP_DEFINE_ENTITY_ID(player_id, "player");
BP_DEFINE_ENTITY_ID(guild_id, "guild");

int main(void) {
  char text[player_id_TEXT_LEN];
#ifdef CONTROL
  player_id p = player_id_now_v7();
  player_id_format(p, text);
#else
  guild_id g = guild_id_now_v7();
  player_id_format(g, text); /* a guild id where a player id is expected */
#endif
  return 0;
}
