/*
 * quickstart.c - a first look at batpak for C.
 *
 *   quickstart [DATA_DIR]      (default ./batpak-data)
 *
 * Shows the pieces every event is made of: a time-ordered id, a kind, a
 * coordinate, a MessagePack payload converted from JSON, and the BLAKE3 hash
 * chain that links an entity's events.
 */
#include <batpak.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check(bp_status st, const char *what) {
  if (st == BP_OK) return 0;
  fprintf(stderr, "quickstart: %s failed: %s (%s)\n", what, bp_status_name(st),
          bp_last_error()->message);
  return 1;
}

static void print_hash(const char *label, const uint8_t h[32]) {
  printf("  %-10s ", label);
  for (int i = 0; i < 8; i++) printf("%02x", h[i]);
  printf("...\n");
}

int main(int argc, char **argv) {
  const char *data_dir = argc > 1 ? argv[1] : "./batpak-data";
  printf("batpak %s, data directory %s\n", bp_version(), data_dir);

  /* A kind is a 4-bit category over a 12-bit type; 0x0 and 0xD are reserved. */
  bp_kind deposited;
  if (check(bp_kind_custom(0x1, 0x001, &deposited), "bp_kind_custom")) return 1;
  char kind_text[7];
  bp_kind_format(deposited, kind_text);
  printf("kind %s (category %u, type %u)\n", kind_text, bp_kind_category(deposited),
         bp_kind_type_id(deposited));

  bp_coord where = {"account:42", "bank"};
  if (check(bp_coord_validate(&where), "bp_coord_validate")) return 1;

  /* Three deposits for one entity, each linked to the one before. */
  const char *payloads[] = {"{\"amount\": 100}", "{\"amount\": 250, \"memo\": \"salary\"}",
                            "{\"amount\": -40}"};
  uint8_t prev[32] = {0};
  for (int i = 0; i < 3; i++) {
    bp_id id = bp_id_v7();
    char uuid[37];
    bp_id_to_uuid(id, uuid);

    uint8_t *mp;
    size_t mp_len;
    if (check(bp_json_to_msgpack(payloads[i], strlen(payloads[i]), &mp, &mp_len), "bp_json_to_msgpack"))
      return 1;

    bp_hash_chain link;
    memcpy(link.prev_hash, prev, 32);
    bp_compute_hash(mp, mp_len, link.event_hash);
    bool ok = bp_verify_chain(mp, mp_len, &link, prev);

    char *back;
    if (check(bp_msgpack_to_json(mp, mp_len, &back), "bp_msgpack_to_json")) return 1;
    printf("event %d  id %s  %s@%s  %zu bytes of MessagePack -> %s\n", i, uuid, where.entity,
           where.scope, mp_len, back);
    print_hash("prev_hash", link.prev_hash);
    print_hash("event_hash", link.event_hash);
    printf("  chain link %s\n", ok ? "verified" : "BROKEN");
    memcpy(prev, link.event_hash, 32);
    bp_free(back);
    bp_free(mp);
    if (!ok) return 1;
  }

  /* Bad input gets an error code and a message, never a crash. */
  uint8_t *mp;
  size_t mp_len;
  bp_status st = bp_json_to_msgpack("{\"amount\": }", 12, &mp, &mp_len);
  printf("malformed JSON -> %s: %s\n", bp_status_name(st), bp_last_error()->message);
  return st == BP_EJSON ? 0 : 1;
}
