/*
 * index_proto.c - the prototype behind docs/INDEX.md: two ways to keep the
 * store's index on disk, measured on the same synthetic events.
 *
 *   index-proto lmdb|runs DIR N [ENTITIES] [RANDOM_KEY_PERCENT]
 *
 * Each design indexes N events (152-byte entries, ids that are UUIDv7-like,
 * i.e. increasing with time, except RANDOM_KEY_PERCENT of them drawn at
 * random as a caller's idempotency keys would be), in groups of 1000 as the
 * writer commits them, then closes; then, in a fresh process for each, it
 * measures: open + first lookup, anonymous memory after open, random id
 * lookups (id -> entry), one entity's stream, and the bytes an open that
 * appends 1 or 1000 events and closes writes.
 *
 * lmdb: one environment, three databases: ids (16-byte id -> sequence),
 *       ent (entity -> sequences, DUPSORT/DUPFIXED), entries (sequence ->
 *       entry, appended). One write transaction per group.
 * runs: an append-only file of fixed-size entries; the newest events'
 *       id table and entity streams in memory; every RUN0 events they are
 *       written as an immutable run (ids sorted, with min/max fences and a
 *       Bloom filter; per-entity postings behind a directory indexed by
 *       entity id); runs of one level are merged eight at a time. Close
 *       writes only the entries appended since the last close and a small
 *       state file; open maps the runs and rebuilds the in-memory part from
 *       the entries file's tail.
 *
 * This is a measuring tool, not library code: no crash safety, little error
 * handling beyond dying.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <lmdb.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct {
  uint8_t id[16];
  uint8_t rest[136 - 16]; /* hashes, clocks, positions: not looked at here */
  uint32_t entity, seq_lo, kind, pad;
} entry; /* 152 bytes, as bp__ientry */
_Static_assert(sizeof(entry) == 152, "entry size");

static const char *g_dir;
static uint64_t g_entities = 4;
static bool no_spill;
static unsigned g_random_pct = 0;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
static void die(const char *what) {
  fprintf(stderr, "index-proto: %s: %s\n", what, strerror(errno));
  exit(1);
}
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) {
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
/* Event n's id: 48 bits of milliseconds (about 500 events a ms) and random
 * bits, big-endian as UUIDs compare; or, for a random key, 128 random bits. */
static void make_id(uint64_t n, uint8_t id[16]) {
  uint64_t saved = rng_state;
  rng_state = n * 0x2545f4914f6cdd1dull + 7;
  uint64_t a = rnd(), b = rnd();
  rng_state = saved;
  bool random_key = g_random_pct && (a % 100) < g_random_pct;
  uint64_t hi = random_key ? rnd() : ((1700000000000ull + n / 500) << 16) | 0x7000 | (a & 0xfff);
  if (random_key) {
    rng_state = n * 31 + 11;
    hi = rnd();
    b = rnd();
    rng_state = saved;
  }
  for (int i = 0; i < 8; i++) id[i] = (uint8_t)(hi >> (56 - 8 * i));
  for (int i = 0; i < 8; i++) id[8 + i] = (uint8_t)(b >> (56 - 8 * i));
}
static void make_entry(uint64_t n, entry *e) {
  memset(e, 0, sizeof *e);
  make_id(n, e->id);
  e->entity = (uint32_t)(n % g_entities);
  e->seq_lo = (uint32_t)n;
  e->kind = (uint32_t)(n % 16);
}
static long proc_field(const char *file, const char *key) {
  FILE *f = fopen(file, "r");
  if (!f) return -1;
  char line[256];
  long v = -1;
  size_t k = strlen(key);
  while (fgets(line, sizeof line, f))
    if (strncmp(line, key, k) == 0) v = atol(line + k);
  fclose(f);
  return v;
}
static long wchar_now(void) { return proc_field("/proc/self/io", "wchar: "); }
static long anon_kb(void) { return proc_field("/proc/self/status", "RssAnon:"); }
static void path(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", g_dir, name); }

/* ------------------------------------------------------------------ lmdb */
typedef struct {
  MDB_env *env;
  MDB_dbi ids, ent, entries;
  MDB_txn *rtxn;
  uint64_t count;
} lm;

static void lm_check(int rc, const char *what) {
  if (rc) {
    fprintf(stderr, "index-proto: %s: %s\n", what, mdb_strerror(rc));
    exit(1);
  }
}
static void lm_open(lm *l, bool rdonly) {
  lm_check(mdb_env_create(&l->env), "env_create");
  mdb_env_set_maxdbs(l->env, 4);
  mdb_env_set_mapsize(l->env, (size_t)64 << 30);
  lm_check(mdb_env_open(l->env, g_dir, MDB_NOSYNC | MDB_NOTLS | (rdonly ? MDB_RDONLY : 0), 0644), "env_open");
  MDB_txn *t;
  lm_check(mdb_txn_begin(l->env, NULL, rdonly ? MDB_RDONLY : 0, &t), "txn");
  unsigned c = rdonly ? 0 : MDB_CREATE;
  lm_check(mdb_dbi_open(t, "ids", c, &l->ids), "dbi ids");
  lm_check(mdb_dbi_open(t, "ent", c | MDB_DUPSORT | MDB_DUPFIXED | MDB_INTEGERKEY | MDB_INTEGERDUP, &l->ent), "ent");
  lm_check(mdb_dbi_open(t, "entries", c | MDB_INTEGERKEY, &l->entries), "entries");
  MDB_stat st;
  mdb_stat(t, l->entries, &st);
  l->count = st.ms_entries;
  lm_check(mdb_txn_commit(t), "commit");
  l->rtxn = NULL;
}
static void lm_append(lm *l, uint64_t n) {
  MDB_txn *t;
  lm_check(mdb_txn_begin(l->env, NULL, 0, &t), "wtxn");
  for (uint64_t i = 0; i < n; i++) {
    uint64_t seq = l->count + i;
    entry e;
    make_entry(seq, &e);
    uint32_t s32 = (uint32_t)seq;
    MDB_val k = {16, e.id}, v = {4, &s32};
    lm_check(mdb_put(t, l->ids, &k, &v, 0), "put id");
    uint32_t ent = e.entity;
    MDB_val ek = {4, &ent}, ev = {4, &s32};
    lm_check(mdb_put(t, l->ent, &ek, &ev, MDB_APPENDDUP), "put ent");
    MDB_val sk = {8, &seq}, sv = {sizeof e, &e};
    lm_check(mdb_put(t, l->entries, &sk, &sv, MDB_APPEND), "put entry");
  }
  lm_check(mdb_txn_commit(t), "commit");
  l->count += n;
}
static void lm_close(lm *l) {
  if (l->rtxn) mdb_txn_abort(l->rtxn);
  mdb_env_sync(l->env, 1);
  mdb_env_close(l->env);
}
static const entry *lm_get(lm *l, const uint8_t id[16]) {
  if (!l->rtxn) lm_check(mdb_txn_begin(l->env, NULL, MDB_RDONLY, &l->rtxn), "rtxn");
  else {
    mdb_txn_reset(l->rtxn);
    lm_check(mdb_txn_renew(l->rtxn), "renew");
  }
  MDB_val k = {16, (void *)id}, v;
  if (mdb_get(l->rtxn, l->ids, &k, &v)) return NULL;
  uint64_t seq;
  uint32_t s32;
  memcpy(&s32, v.mv_data, 4);
  seq = s32;
  MDB_val sk = {8, &seq};
  if (mdb_get(l->rtxn, l->entries, &sk, &v)) return NULL;
  return v.mv_data;
}
static uint64_t lm_stream(lm *l, uint32_t entity, uint64_t max, uint64_t *sum) {
  if (!l->rtxn) lm_check(mdb_txn_begin(l->env, NULL, MDB_RDONLY, &l->rtxn), "rtxn");
  MDB_cursor *c;
  lm_check(mdb_cursor_open(l->rtxn, l->ent, &c), "cursor");
  MDB_val k = {4, &entity}, v;
  uint64_t n = 0;
  int rc = mdb_cursor_get(c, &k, &v, MDB_SET);
  if (rc == 0) rc = mdb_cursor_get(c, &k, &v, MDB_GET_MULTIPLE);
  while (rc == 0 && n < max) {
    const uint32_t *s = v.mv_data;
    for (size_t i = 0; i < v.mv_size / 4 && n < max; i++, n++) *sum += s[i];
    rc = mdb_cursor_get(c, &k, &v, MDB_NEXT_MULTIPLE);
  }
  mdb_cursor_close(c);
  return n;
}

/* ------------------------------------------------------------------ runs */
#define RUN0 65536u
#define FANOUT 8

typedef struct {
  uint8_t id[16];
  uint32_t seq;
} idrec; /* 20 bytes packed below */

typedef struct {
  char magic[8];
  uint64_t first, end;       /* sequences [first, end) */
  uint64_t level;
  uint64_t nids, nent;       /* id records, directory slots */
  uint64_t ids_off, dir_off, post_off, slots_off, nslots;
  uint8_t min_id[16], max_id[16];
} run_hdr;

typedef struct {
  run_hdr *h;
  size_t len;
  const uint32_t *dir;       /* nent x (offset, count) */
  const uint32_t *post;
  const uint32_t *slots;     /* nslots x (hash high half, seq + 1) */
  char name[64];
} run;

typedef struct {
  uint32_t *v;
  uint32_t n, cap;
} vec;

typedef struct {
  int efd;                   /* entries file */
  entry *emap;               /* mapping of the entries file */
  size_t emap_len;
  uint64_t count;            /* events */
  uint64_t durable;          /* entries written to the file */
  uint64_t runs_end;         /* events covered by runs */
  run runs[256];
  int nruns;
  uint64_t next_run_name;
  /* the in-memory part: [runs_end, count) */
  entry *tail;               /* entries not yet in the file */
  uint64_t tail_cap;
  uint64_t *hslots;          /* (seq+1): open addressing on the id */
  uint64_t hmask;
  vec *ent;                  /* by entity */
} rs;

static uint64_t id_hash(const uint8_t id[16]) {
  uint64_t a, b;
  memcpy(&a, id, 8);
  memcpy(&b, id + 8, 8);
  return (a ^ (b * 0x9e3779b97f4a7c15ull)) * 0xff51afd7ed558ccdull;
}
static const entry *rs_entry(rs *r, uint64_t seq) {
  if (seq < r->durable) return &r->emap[seq];
  return &r->tail[seq - r->durable];
}
static void vec_push(vec *v, uint32_t x) {
  if (v->n == v->cap) {
    v->cap = v->cap ? v->cap * 2 : 16;
    v->v = realloc(v->v, v->cap * 4);
  }
  v->v[v->n++] = x;
}
static void rs_hash_reset(rs *r) {
  free(r->hslots);
  r->hmask = (1u << 18) - 1; /* RUN0 * 4 slots */
  if (no_spill) r->hmask = (1u << 25) - 1;
  r->hslots = calloc(r->hmask + 1, 8);
  for (uint64_t e = 0; e < g_entities; e++) r->ent[e].n = 0;
}
static void rs_index_mem(rs *r, uint64_t seq, const entry *e) {
  uint64_t i = id_hash(e->id) & r->hmask;
  while (r->hslots[i]) i = (i + 1) & r->hmask;
  r->hslots[i] = seq + 1;
  vec_push(&r->ent[e->entity], (uint32_t)seq);
}
static void rs_map_entries(rs *r) {
  if (r->emap) munmap(r->emap, r->emap_len);
  r->emap = NULL;
  r->emap_len = r->durable * sizeof(entry);
  if (r->emap_len) {
    r->emap = mmap(NULL, r->emap_len, PROT_READ, MAP_SHARED, r->efd, 0);
    if (r->emap == MAP_FAILED) die("mmap entries");
  }
}
static void run_map(run *u, const char *name) {
  char p[4096];
  snprintf(u->name, sizeof u->name, "%s", name);
  path(p, sizeof p, name);
  int fd = open(p, O_RDONLY);
  if (fd < 0) die("open run");
  struct stat st;
  fstat(fd, &st);
  u->len = (size_t)st.st_size;
  uint8_t *m = mmap(NULL, u->len, PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  if (m == MAP_FAILED) die("mmap run");
  u->h = (run_hdr *)m;
  u->dir = (const uint32_t *)(m + u->h->dir_off);
  u->post = (const uint32_t *)(m + u->h->post_off);
  u->slots = (const uint32_t *)(m + u->h->slots_off);
}

/* Writes a run from sorted id records and per-entity postings. */
static void run_write(rs *r, run *u, uint64_t first, uint64_t end, uint64_t level, uint8_t *ids, uint64_t nids,
                      vec *ent) {
  run_hdr h = {0};
  memcpy(h.magic, "BPRUN01\0", 8);
  h.first = first;
  h.end = end;
  h.level = level;
  h.nids = nids;
  h.nent = g_entities;
  h.ids_off = sizeof h;
  h.dir_off = h.ids_off;
  h.dir_off = (h.dir_off + 7) & ~7ull;
  h.post_off = h.dir_off + g_entities * 8;
  uint64_t nposts = 0;
  for (uint64_t e = 0; e < g_entities; e++) nposts += ent[e].n;
  h.slots_off = (h.post_off + nposts * 4 + 7) & ~7ull;
  h.nslots = 16;
  while (h.nslots < 2 * nids) h.nslots *= 2;
  memcpy(h.min_id, ids, 16);
  memcpy(h.max_id, ids, 16);
  for (uint64_t i = 1; i < nids; i++) {
    if (memcmp(ids + i * 20, h.min_id, 16) < 0) memcpy(h.min_id, ids + i * 20, 16);
    if (memcmp(ids + i * 20, h.max_id, 16) > 0) memcpy(h.max_id, ids + i * 20, 16);
  }
  size_t total = h.slots_off + h.nslots * 8;
  uint8_t *b = calloc(1, total);
  memcpy(b, &h, sizeof h);
  uint32_t *dir = (uint32_t *)(b + h.dir_off), *post = (uint32_t *)(b + h.post_off);
  uint32_t off = 0;
  for (uint64_t e = 0; e < g_entities; e++) {
    dir[2 * e] = off;
    dir[2 * e + 1] = ent[e].n;
    memcpy(post + off, ent[e].v, ent[e].n * 4);
    off += ent[e].n;
  }
  uint32_t *slots = (uint32_t *)(b + h.slots_off);
  for (uint64_t i = 0; i < nids; i++) {
    uint64_t hv = id_hash(ids + i * 20), j = hv & (h.nslots - 1);
    while (slots[2 * j + 1]) j = (j + 1) & (h.nslots - 1);
    slots[2 * j] = (uint32_t)(hv >> 32);
    memcpy(&slots[2 * j + 1], ids + i * 20 + 16, 4);
    slots[2 * j + 1]++;
  }
  char name[64], p[4096];
  snprintf(name, sizeof name, "run-%06" PRIu64, r->next_run_name++);
  path(p, sizeof p, name);
  int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0 || write(fd, b, total) != (ssize_t)total) die("write run");
  close(fd);
  free(b);
  run_map(u, name);
}
static void run_unlink(run *u) {
  char p[4096];
  path(p, sizeof p, u->name);
  munmap(u->h, u->len);
  unlink(p);
}
/* Merges the FANOUT runs that start at index i into one of the next level. */
static void rs_merge(rs *r, int i) {
  uint64_t nids = 0;
  for (int j = i; j < i + FANOUT; j++) nids += r->runs[j].h->nids;
  uint8_t *ids = malloc(nids * 20);
  /* the ids come from the entries file */
  for (uint64_t o = 0; o < nids; o++) {
    uint32_t seq = (uint32_t)(r->runs[i].h->first + o);
    memcpy(ids + o * 20, rs_entry(r, seq)->id, 16);
    memcpy(ids + o * 20 + 16, &seq, 4);
  }
  vec *ent = calloc(g_entities, sizeof *ent);
  for (uint64_t e = 0; e < g_entities; e++) {
    uint32_t n = 0;
    for (int j = i; j < i + FANOUT; j++) n += r->runs[j].dir[2 * e + 1];
    ent[e].v = malloc((n ? n : 1) * 4);
    for (int j = i; j < i + FANOUT; j++) {
      run *u = &r->runs[j];
      memcpy(ent[e].v + ent[e].n, u->post + u->dir[2 * e], u->dir[2 * e + 1] * 4);
      ent[e].n += u->dir[2 * e + 1];
    }
  }
  run merged;
  run_write(r, &merged, r->runs[i].h->first, r->runs[i + FANOUT - 1].h->end, r->runs[i].h->level + 1, ids, nids,
            ent);
  for (int j = i; j < i + FANOUT; j++) run_unlink(&r->runs[j]);
  r->runs[i] = merged;
  memmove(&r->runs[i + 1], &r->runs[i + FANOUT], (size_t)(r->nruns - i - FANOUT) * sizeof(run));
  r->nruns -= FANOUT - 1;
  for (uint64_t e = 0; e < g_entities; e++) free(ent[e].v);
  free(ent);
  free(ids);
}
static void rs_flush_entries(rs *r) {
  uint64_t n = r->count - r->durable;
  if (!n) return;
  if (pwrite(r->efd, r->tail, n * sizeof(entry), (off_t)(r->durable * sizeof(entry))) != (ssize_t)(n * sizeof(entry)))
    die("pwrite entries");
  r->durable = r->count;
  rs_map_entries(r);
}
static void rs_write_state(rs *r) {
  char p[4096], t[4096];
  path(p, sizeof p, "state");
  path(t, sizeof t, "state.tmp");
  FILE *f = fopen(t, "w");
  fprintf(f, "%" PRIu64 " %" PRIu64 " %" PRIu64 " %d\n", r->durable, r->runs_end, r->next_run_name, r->nruns);
  for (int i = 0; i < r->nruns; i++) fprintf(f, "%s\n", r->runs[i].name);
  fclose(f);
  rename(t, p);
}
/* The in-memory part became RUN0 events: write it as a run, merge levels. */
static void rs_spill(rs *r) {
  rs_flush_entries(r);
  uint64_t n = r->count - r->runs_end;
  uint8_t *ids = malloc(n * 20);
  for (uint64_t i = 0; i < n; i++) {
    uint32_t seq = (uint32_t)(r->runs_end + i);
    memcpy(ids + i * 20, rs_entry(r, seq)->id, 16);
    memcpy(ids + i * 20 + 16, &seq, 4);
  }
  run_write(r, &r->runs[r->nruns++], r->runs_end, r->count, 0, ids, n, r->ent);
  free(ids);
  r->runs_end = r->count;
  rs_hash_reset(r);
  for (;;) {
    int i = r->nruns - FANOUT;
    if (i < 0) break;
    bool same = true;
    for (int j = i; j < r->nruns; j++) same = same && r->runs[j].h->level == r->runs[i].h->level;
    if (!same) break;
    rs_merge(r, i);
  }
  rs_write_state(r);
}
static void rs_open(rs *r) {
  memset(r, 0, sizeof *r);
  char p[4096];
  path(p, sizeof p, "entries");
  r->efd = open(p, O_RDWR | O_CREAT, 0644);
  if (r->efd < 0) die("open entries");
  r->ent = calloc(g_entities, sizeof *r->ent);
  rs_hash_reset(r);
  r->tail_cap = 1 << 16;
  r->tail = malloc(r->tail_cap * sizeof(entry));
  path(p, sizeof p, "state");
  FILE *f = fopen(p, "r");
  if (f) {
    if (fscanf(f, "%" SCNu64 " %" SCNu64 " %" SCNu64 " %d", &r->durable, &r->runs_end, &r->next_run_name,
               &r->nruns) != 4)
      die("state");
    for (int i = 0; i < r->nruns; i++) {
      char name[64];
      if (fscanf(f, "%63s", name) != 1) die("state run");
      run_map(&r->runs[i], name);
    }
    fclose(f);
  }
  r->count = r->durable;
  rs_map_entries(r);
  for (uint64_t s = r->runs_end; s < r->count; s++) rs_index_mem(r, s, rs_entry(r, s));
}
static void rs_append(rs *r, uint64_t n) {
  for (uint64_t i = 0; i < n; i++) {
    uint64_t seq = r->count;
    if (seq - r->durable == r->tail_cap) {
      r->tail_cap *= 2;
      r->tail = realloc(r->tail, r->tail_cap * sizeof(entry));
    }
    entry *e = &r->tail[seq - r->durable];
    make_entry(seq, e);
    rs_index_mem(r, seq, e);
    r->count++;
    if (r->count - r->runs_end == RUN0 && !no_spill) rs_spill(r);
  }
}
static void rs_close(rs *r) {
  rs_flush_entries(r);
  fdatasync(r->efd);
  rs_write_state(r);
  close(r->efd);
}
static const entry *rs_get(rs *r, const uint8_t id[16]) {
  uint64_t hv = id_hash(id);
  for (uint64_t i = hv & r->hmask; r->hslots[i]; i = (i + 1) & r->hmask) {
    const entry *e = rs_entry(r, r->hslots[i] - 1);
    if (memcmp(e->id, id, 16) == 0) return e;
  }
  for (int k = r->nruns - 1; k >= 0; k--) {
    const run *u = &r->runs[k];
    if (memcmp(id, u->h->min_id, 16) < 0 || memcmp(id, u->h->max_id, 16) > 0) continue;
    uint64_t m = u->h->nslots - 1;
    for (uint64_t j = hv & m; u->slots[2 * j + 1]; j = (j + 1) & m) {
      if (u->slots[2 * j] != (uint32_t)(hv >> 32)) continue;
      const entry *e = rs_entry(r, u->slots[2 * j + 1] - 1);
      if (memcmp(e->id, id, 16) == 0) return e;
    }
  }
  return NULL;
}
static uint64_t rs_stream(rs *r, uint32_t entity, uint64_t max, uint64_t *sum) {
  uint64_t n = 0;
  for (int k = 0; k < r->nruns && n < max; k++) {
    const run *u = &r->runs[k];
    const uint32_t *p = u->post + u->dir[2 * entity];
    for (uint32_t i = 0; i < u->dir[2 * entity + 1] && n < max; i++, n++) *sum += p[i];
  }
  for (uint32_t i = 0; i < r->ent[entity].n && n < max; i++, n++) *sum += r->ent[entity].v[i];
  return n;
}

/* ------------------------------------------------------------------ driver */
static bool use_lmdb;
static lm L;
static rs R;

static void d_open(bool rdonly) {
  if (use_lmdb) lm_open(&L, rdonly);
  else rs_open(&R);
}
static uint64_t d_count(void) { return use_lmdb ? L.count : R.count; }
static void d_append(uint64_t n) {
  if (use_lmdb) lm_append(&L, n);
  else rs_append(&R, n);
}
static void d_close(void) {
  if (use_lmdb) lm_close(&L);
  else rs_close(&R);
}
static const entry *d_get(const uint8_t id[16]) { return use_lmdb ? lm_get(&L, id) : rs_get(&R, id); }
static uint64_t d_stream(uint32_t e, uint64_t max, uint64_t *sum) {
  return use_lmdb ? lm_stream(&L, e, max, sum) : rs_stream(&R, e, max, sum);
}
static uint64_t disk_bytes(void) {
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "du -sb %s", g_dir);
  FILE *p = popen(cmd, "r");
  unsigned long long v = 0;
  if (p && fscanf(p, "%llu", &v) != 1) v = 0;
  if (p) pclose(p);
  return v;
}

static void phase_open_get(void) {
  long a0 = anon_kb();
  uint8_t id[16];
  make_id(d_count() / 3, id);
  double t0 = now_s();
  d_open(true);
  make_id(d_count() / 3, id);
  const entry *e = d_get(id);
  double t1 = now_s();
  if (!e || e->seq_lo != (uint32_t)(d_count() / 3)) {
    fprintf(stderr, "first get wrong\n");
    exit(1);
  }
  printf("open_first_get_ms %.3f\nanon_after_open_kb %ld\n", (t1 - t0) * 1e3, anon_kb() - a0);
  /* random gets */
  uint64_t n = d_count(), q = 200000;
  double g0 = now_s();
  for (uint64_t i = 0; i < q; i++) {
    uint64_t s = rnd() % n;
    make_id(s, id);
    const entry *x = d_get(id);
    if (!x || x->seq_lo != (uint32_t)s) {
      fprintf(stderr, "get %" PRIu64 " wrong\n", s);
      exit(1);
    }
  }
  double g1 = now_s();
  /* the cost of make_id alone, to subtract */
  double m0 = now_s();
  volatile uint8_t sink = 0;
  for (uint64_t i = 0; i < q; i++) {
    make_id(rnd() % n, id);
    sink ^= id[3];
  }
  double m1 = now_s();
  printf("get_ns %.0f\n", ((g1 - g0) - (m1 - m0)) / (double)q * 1e9);
  /* again, now that the pages are mapped in this process */
  double h0 = now_s();
  for (uint64_t i = 0; i < q; i++) {
    uint64_t s = rnd() % n;
    make_id(s, id);
    if (!d_get(id)) exit(1);
  }
  double h1 = now_s();
  printf("get_warm_ns %.0f\n", ((h1 - h0) - (m1 - m0)) / (double)q * 1e9);
  uint64_t sum = 0;
  double s0 = now_s();
  uint64_t got = d_stream(1, UINT64_MAX, &sum);
  double s1 = now_s();
  printf("stream_items %" PRIu64 "\nstream_ns_per_item %.2f\n", got, (s1 - s0) / (double)got * 1e9);
  double f0 = now_s();
  for (int i = 0; i < 1000; i++) d_stream(2, 10, &sum);
  double f1 = now_s();
  printf("stream_first10_us %.3f\n", (f1 - f0) / 1000 * 1e6);
  if (use_lmdb) lm_close(&L);
  (void)sum;
}
static void phase_append_close(uint64_t k) {
  long w0 = wchar_now();
  uint64_t d0 = disk_bytes();
  double t0 = now_s();
  d_open(false);
  double t1 = now_s();
  d_append(k);
  double t2 = now_s();
  d_close();
  double t3 = now_s();
  long w1 = wchar_now();
  printf("append%" PRIu64 "_open_ms %.3f\nappend%" PRIu64 "_close_ms %.3f\nappend%" PRIu64 "_written_bytes %ld\n"
         "append%" PRIu64 "_disk_growth %" PRId64 "\n",
         k, (t1 - t0) * 1e3, k, (t3 - t2) * 1e3, k, w1 - w0, k, (int64_t)(disk_bytes() - d0));
}
static void in_child(void (*fn)(uint64_t), uint64_t arg) {
  fflush(stdout);
  pid_t p = fork();
  if (p == 0) {
    fn(arg);
    fflush(stdout);
    _exit(0);
  }
  int st;
  waitpid(p, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st)) exit(1);
}
static void open_get_child(uint64_t unused) {
  (void)unused;
  phase_open_get();
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: index-proto lmdb|runs DIR N [ENTITIES] [RANDOM_KEY_PERCENT]\n");
    return 2;
  }
  use_lmdb = strcmp(argv[1], "lmdb") == 0;
  no_spill = strcmp(argv[1], "mem") == 0;
  g_dir = argv[2];
  uint64_t n = strtoull(argv[3], NULL, 10);
  if (argc > 4) g_entities = strtoull(argv[4], NULL, 10);
  if (argc > 5) g_random_pct = (unsigned)atoi(argv[5]);
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s", g_dir, g_dir);
  if (system(cmd)) die("mkdir");
  printf("design %s\nevents %" PRIu64 "\nentities %" PRIu64 "\nrandom_key_pct %u\n", argv[1], n, g_entities,
         g_random_pct);
  long w0 = wchar_now();
  double t0 = now_s();
  d_open(false);
  for (uint64_t done = 0; done < n;) {
    uint64_t g = n - done < 1000 ? n - done : 1000;
    d_append(g);
    done += g;
  }
  d_close();
  double t1 = now_s();
  printf("build_ns_per_event %.1f\nbuild_written_bytes_per_event %.1f\ndisk_bytes_per_event %.1f\n",
         (t1 - t0) / (double)n * 1e9, (double)(wchar_now() - w0) / (double)n, (double)disk_bytes() / (double)n);
  in_child(open_get_child, 0);
  in_child(phase_append_close, 1);
  in_child(phase_append_close, 1000);
  in_child(open_get_child, 0);
  return 0;
}
