/* position.c - DAG positions and event header helpers. */
#include "internal.h"

#include <inttypes.h>
#include <stdio.h>

bp_position bp_position_root(void) {
  bp_position p;
  memset(&p, 0, sizeof p);
  return p;
}

bp_position bp_position_child(uint32_t sequence) {
  bp_position p = bp_position_root();
  p.sequence = sequence;
  return p;
}

bp_position bp_position_child_at(uint32_t sequence, uint64_t wall_ms, uint16_t counter) {
  bp_position p = bp_position_child(sequence);
  p.wall_ms = wall_ms;
  p.counter = counter;
  return p;
}

bp_position bp_position_fork(uint32_t parent_depth, uint32_t new_lane) {
  bp_position p = bp_position_root();
  p.depth = parent_depth + 1;
  p.lane = new_lane;
  return p;
}

bool bp_position_is_root(const bp_position *p) {
  return p->depth == 0 && p->lane == 0 && p->sequence == 0;
}

bool bp_position_is_ancestor_of(const bp_position *a, const bp_position *b) {
  return a->lane == b->lane && a->depth == b->depth && a->sequence < b->sequence;
}

bool bp_position_compare(const bp_position *a, const bp_position *b, int *order) {
  if (a->lane != b->lane || a->depth != b->depth) return false;
  if (order) *order = (a->sequence > b->sequence) - (a->sequence < b->sequence);
  return true;
}

int bp_position_format(const bp_position *p, char *out, size_t size) {
  return snprintf(out, size, "%" PRIu32 ":%" PRIu32 ":%" PRIu32 "@%" PRIu64 ".%u", p->depth,
                  p->lane, p->sequence, p->wall_ms, (unsigned)p->counter);
}

bool bp_header_requires_ack(const bp_header *h) { return (h->flags & BP_FLAG_REQUIRES_ACK) != 0; }
bool bp_header_is_transactional(const bp_header *h) {
  return (h->flags & BP_FLAG_TRANSACTIONAL) != 0;
}
bool bp_header_is_replay(const bp_header *h) { return (h->flags & BP_FLAG_REPLAY) != 0; }

uint64_t bp_header_age_us(const bp_header *h, int64_t now_us) {
  if (now_us <= h->timestamp_us) return 0;
  /* The difference of two int64 values fits in uint64 when now_us > timestamp_us. */
  return (uint64_t)now_us - (uint64_t)h->timestamp_us;
}
