/* fuzz_checkpoint.c - the reader of a checkpoint entry on arbitrary bytes.
 * Invariants: the canonical fast path with its fallback and the general
 * reader alone agree (same status, same entry and sequence, same bytes
 * consumed); an entry that reads re-encodes to bytes the fast path takes,
 * giving the same entry back. */
#include "store/store_impl.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same_entry(const bp__ientry *a, const bp__ientry *b) { return memcmp(a, b, sizeof *a) == 0; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  bp__mp_reader r1, r2;
  bp__mp_reader_init(&r1, data, size);
  bp__mp_reader_init(&r2, data, size);
  bp__ientry e1, e2;
  uint64_t seq1 = 0, seq2 = 0;
  bp_status st = bp__checkpoint_read_entry(&r1, &e1, &seq1);
  if (bp__checkpoint_read_entry_general(&r2, &e2, &seq2) != st) abort();
  if (st != BP_OK) return 0;
  if (!same_entry(&e1, &e2) || seq1 != seq2 || r1.p != r2.p) abort();

  bp__buf b;
  bp__buf_init(&b);
  bp__checkpoint_put_entry(&b, &e1, seq1);
  if (b.oom) abort();
  bp__mp_reader r3;
  bp__mp_reader_init(&r3, b.data, b.len);
  bp__ientry e3;
  uint64_t seq3 = 0;
  if (bp__checkpoint_read_entry(&r3, &e3, &seq3) != BP_OK || !same_entry(&e1, &e3) || seq3 != seq1 ||
      r3.p != r3.end)
    abort();
  bp__buf_free(&b);
  return 0;
}
