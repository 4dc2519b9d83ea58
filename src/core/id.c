/*
 * id.c - 128-bit event ids: UUIDv7 generation, formatting and parsing.
 *
 * Layout of a v7 id (RFC 9562), most significant bit first:
 *
 *   hi: | unix_ms (48) | ver=0111 (4) | rand_a (12) |
 *   lo: | var=10 (2)   | rand_b (62)                 |
 *
 * Monotonicity: each thread remembers the last id it made. When the clock has
 * not moved past that id's millisecond (same millisecond, or the clock stepped
 * back), the new id is the last one plus one in the 74 random bits, carrying
 * into the millisecond field if those overflow. So ids from one thread strictly
 * increase. Uniqueness across threads and processes rests on the 74 random bits
 * drawn from a per-thread generator seeded by getrandom(); a fork re-seeds the
 * child's generators so parent and child never share a sequence.
 */
#include "internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static atomic_uint fork_generation;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void) { atomic_fetch_add(&fork_generation, 1); }
static void install_atfork(void) { pthread_atfork(NULL, NULL, on_fork_child); }

typedef struct id_state {
  bool seeded;
  unsigned generation;
  uint64_t rng[2];          /* xorshift128+ */
  uint64_t last_hi, last_lo;
} id_state;

static _Thread_local id_state tls;

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static void seed(id_state *s) {
  uint64_t seedv[2] = {0, 0};
  if (getrandom(seedv, sizeof seedv, 0) != (ssize_t)sizeof seedv) {
    /* No entropy source: fall back to time, pid and the state's address. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    seedv[0] = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)getpid();
    seedv[1] = (uint64_t)(uintptr_t)s;
  }
  uint64_t x = seedv[0] ^ (seedv[1] * 0x2545F4914F6CDD1Dull);
  s->rng[0] = splitmix64(&x);
  s->rng[1] = splitmix64(&x) | 1;
  s->last_hi = s->last_lo = 0;
  s->seeded = true;
}

static uint64_t next_random(id_state *s) {
  uint64_t a = s->rng[0], b = s->rng[1];
  s->rng[0] = b;
  a ^= a << 23;
  s->rng[1] = a ^ b ^ (a >> 17) ^ (b >> 26);
  return s->rng[1] + b;
}

static uint64_t now_unix_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

#define MS_MASK 0xFFFFFFFFFFFFull
#define RAND_A_MASK 0xFFFull
#define RAND_B_MASK 0x3FFFFFFFFFFFFFFFull

bp_id bp_id_v7(void) {
  pthread_once(&atfork_once, install_atfork);
  id_state *s = &tls;
  unsigned gen = atomic_load_explicit(&fork_generation, memory_order_relaxed);
  if (!s->seeded || s->generation != gen) {
    seed(s);
    s->generation = gen;
  }

  uint64_t ms = now_unix_ms() & MS_MASK;
  uint64_t last_ms = s->last_hi >> 16;
  uint64_t rand_a, rand_b;
  if (s->last_hi != 0 && ms <= last_ms) {
    /* Not past the last id's millisecond: step the 74-bit counter by one. */
    ms = last_ms;
    rand_a = s->last_hi & RAND_A_MASK;
    rand_b = (s->last_lo & RAND_B_MASK) + 1;
    if (rand_b > RAND_B_MASK) {
      rand_b = 0;
      if (++rand_a > RAND_A_MASK) {
        rand_a = 0;
        ms = (ms + 1) & MS_MASK;
      }
    }
  } else {
    uint64_t r = next_random(s);
    rand_a = r & RAND_A_MASK;
    /* Keep the top bit of rand_b clear so that many increments fit before a carry. */
    rand_b = next_random(s) & (RAND_B_MASK >> 1);
  }
  bp_id id;
  id.hi = (ms << 16) | (0x7ull << 12) | rand_a;
  id.lo = (0x2ull << 62) | rand_b;
  s->last_hi = id.hi;
  s->last_lo = id.lo;
  return id;
}

bool bp_id_is_nil(bp_id id) { return id.hi == 0 && id.lo == 0; }
bool bp_id_eq(bp_id a, bp_id b) { return a.hi == b.hi && a.lo == b.lo; }

int bp_id_cmp(bp_id a, bp_id b) {
  if (a.hi != b.hi) return a.hi < b.hi ? -1 : 1;
  if (a.lo != b.lo) return a.lo < b.lo ? -1 : 1;
  return 0;
}

unsigned bp_id_version(bp_id id) { return (unsigned)((id.hi >> 12) & 0xF); }
uint64_t bp_id_unix_ms(bp_id id) { return id.hi >> 16; }

static const char hexdigits[] = "0123456789abcdef";

static void put_hex64(uint64_t v, char *out) {
  for (int i = 15; i >= 0; i--) {
    out[i] = hexdigits[v & 0xF];
    v >>= 4;
  }
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

void bp_id_to_hex(bp_id id, char out[33]) {
  put_hex64(id.hi, out);
  put_hex64(id.lo, out + 16);
  out[32] = '\0';
}

/* Parses 32 hex digits from text, skipping hyphens at the given positions
 * (a bitmask over the character index); the text must end right after. */
static bp_status parse_digits(const char *text, size_t total, const bool *hyphen_at, bp_id *out,
                              const char *form) {
  if (!text || !out) return bp__fail(BP_EINVAL, "bp_id: NULL argument");
  uint64_t hi = 0, lo = 0;
  int digits = 0;
  for (size_t i = 0; i < total; i++) {
    char c = text[i];
    if (c == '\0') return bp__fail(BP_EINVAL, "bp_id: %s is too short (%zu characters)", form, i);
    if (hyphen_at && hyphen_at[i]) {
      if (c != '-') return bp__fail(BP_EINVAL, "bp_id: expected '-' at index %zu of %s", i, form);
      continue;
    }
    int v = hexval(c);
    if (v < 0) return bp__fail(BP_EINVAL, "bp_id: invalid hex digit at index %zu of %s", i, form);
    if (digits < 16) hi = (hi << 4) | (uint64_t)v;
    else lo = (lo << 4) | (uint64_t)v;
    digits++;
  }
  if (text[total] != '\0') return bp__fail(BP_EINVAL, "bp_id: %s is too long", form);
  out->hi = hi;
  out->lo = lo;
  return BP_OK;
}

bp_status bp_id_from_hex(const char *text, bp_id *out) {
  return parse_digits(text, 32, NULL, out, "32-digit hex id");
}

void bp_id_to_uuid(bp_id id, char out[37]) {
  char hex[33];
  bp_id_to_hex(id, hex);
  memcpy(out, hex, 8);
  out[8] = '-';
  memcpy(out + 9, hex + 8, 4);
  out[13] = '-';
  memcpy(out + 14, hex + 12, 4);
  out[18] = '-';
  memcpy(out + 19, hex + 16, 4);
  out[23] = '-';
  memcpy(out + 24, hex + 20, 12);
  out[36] = '\0';
}

bp_status bp_id_from_uuid(const char *text, bp_id *out) {
  static const bool hyphens[36] = {[8] = true, [13] = true, [18] = true, [23] = true};
  return parse_digits(text, 36, hyphens, out, "UUID string");
}

void bp_id_to_bytes(bp_id id, uint8_t out[16]) {
  bp__put_be64(out, id.hi);
  bp__put_be64(out + 8, id.lo);
}

bp_id bp_id_from_bytes(const uint8_t in[16]) {
  bp_id id = {bp__get_be64(in), bp__get_be64(in + 8)};
  return id;
}
