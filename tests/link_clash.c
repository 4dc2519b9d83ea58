/*
 * link_clash.c - a program that defines names the library uses inside
 * (BLAKE3's functions, an internal bp__ function) and links the static
 * library: it links only because libbatpak.a exports nothing but the bp_
 * API, and it runs only if the library still calls its own copies.
 */
#include <batpak.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The program's own BLAKE3 (a stand-in with the real names). */
void blake3_hasher_init(void *self);
void blake3_hasher_init(void *self) { memset(self, 0xab, 8); }
const char *blake3_version(void);
const char *blake3_version(void) { return "the program's own"; }
/* A name of the library's inside. */
int bp__now_us(void);
int bp__now_us(void) { return 42; }

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  uint8_t h[8];
  blake3_hasher_init(h);
  if (h[0] != 0xab || bp__now_us() != 42 || strcmp(blake3_version(), "the program's own") != 0) return 3;
  bp_config cfg;
  bp_config_init(&cfg, argv[1]);
  bp_store *s;
  bp_coord c = {"link:1", "test"};
  bp_append_receipt r;
  bp_event *ev;
  if (bp_open(&cfg, &s) || bp_append(s, &c, 0x1001, "\xc0", 1, &r) || bp_get(s, r.event_id, &ev)) {
    fprintf(stderr, "link_clash: %s\n", bp_last_error()->message);
    return 1;
  }
  /* The content hash is BLAKE3's (the library's own copy), not the stand-in's. */
  int ok = ev->header.content_hash[0] != 0xab || ev->header.content_hash[1] != 0xab;
  bp_event_free(ev);
  bp_close(s);
  return ok ? 0 : 4;
}
