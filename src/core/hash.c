/* hash.c - BLAKE3 content hashes and hash-chain checks. */
#include "internal.h"

#include <blake3.h>

void bp_compute_hash(const void *data, size_t len, uint8_t out[32]) {
  blake3_hasher h;
  blake3_hasher_init(&h);
  if (len) blake3_hasher_update(&h, data, len);
  blake3_hasher_finalize(&h, out, 32);
}

bool bp_verify_chain(const void *data, size_t len, const bp_hash_chain *chain,
                     const uint8_t expected_prev[32]) {
  if (memcmp(chain->prev_hash, expected_prev, 32) != 0) return false;
  uint8_t h[32];
  bp_compute_hash(data, len, h);
  return memcmp(h, chain->event_hash, 32) == 0;
}
