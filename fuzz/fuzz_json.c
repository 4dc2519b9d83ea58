/* fuzz_json.c - JSON -> MessagePack -> JSON -> MessagePack on arbitrary text.
 * Invariant: text that converts once converts back and forth to a fixed point. */
#include "batpak/wire.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint8_t *mp = NULL, *mp2 = NULL;
  size_t n = 0, n2 = 0;
  char *json = NULL;
  if (bp_json_to_msgpack((const char *)data, size, &mp, &n) != BP_OK) return 0;
  if (bp_msgpack_to_json(mp, n, &json) != BP_OK) abort();
  if (bp_json_to_msgpack(json, strlen(json), &mp2, &n2) != BP_OK) abort();
  if (n != n2 || memcmp(mp, mp2, n) != 0) abort();
  bp_free(mp);
  bp_free(mp2);
  bp_free(json);
  return 0;
}
