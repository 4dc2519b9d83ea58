/* index.c - the in-memory index (see the concurrency essay in index.h). */
#include "store/index.h"
#include "store/os.h"

/* Arrays that readers may still hold are not freed when replaced but kept on
 * the retired list until bp__index_free. A replacement is allocated together
 * with the list node that will keep the old array (none when old is NULL):
 * both or neither, so that running out of memory leaves the index as it was
 * rather than losing track of the old array. zero: calloc's zeroed memory. */
static void *alloc_replacement(const void *old, size_t count, size_t size, bool zero, bp__retired **node) {
  *node = old ? malloc(sizeof **node) : NULL;
  if (old && !*node) return NULL;
  void *fresh = zero ? calloc(count, size) : malloc(count * size);
  if (!fresh) {
    free(*node);
    *node = NULL;
  }
  return fresh;
}

static void retire(bp__index *ix, bp__retired *node, void *old) {
  if (!old) return;
  node->ptr = old;
  node->next = ix->retired;
  ix->retired = node;
}

static uint32_t hash_bytes(const char *s, size_t len) {
  /* FNV-1a, then a final mix so that the low bits spread. */
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
  h ^= h >> 16;
  h *= 0x7feb352d;
  h ^= h >> 15;
  return h;
}

static uint64_t hash_id(bp_id id) {
  uint64_t x = id.hi ^ (id.lo * 0x9E3779B97F4A7C15ull);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return x;
}

/* ---- seqvec ---- */

static bool seqvec_push(bp__index *ix, bp__seqvec *v, uint32_t seq) {
  uint32_t len = atomic_load_explicit(&v->len, memory_order_relaxed);
  uint32_t *d = atomic_load_explicit(&v->data, memory_order_relaxed);
  if (len == v->cap) {
    uint32_t cap = v->cap ? v->cap * 2 : 4;
    if (cap < v->cap) return false;
    bp__retired *node;
    uint32_t *nd = alloc_replacement(d, cap, sizeof *nd, false, &node);
    if (!nd) return false;
    if (len) memcpy(nd, d, (size_t)len * sizeof *nd);
    atomic_store_explicit(&v->data, nd, memory_order_release);
    retire(ix, node, d);
    d = nd;
    v->cap = cap;
  }
  d[len] = seq;
  atomic_store_explicit(&v->len, len + 1, memory_order_release);
  return true;
}

/* Removes trailing items at or above seq (they were never visible). */
static void seqvec_truncate(bp__seqvec *v, uint32_t seq) {
  uint32_t len = atomic_load_explicit(&v->len, memory_order_relaxed);
  const uint32_t *d = atomic_load_explicit(&v->data, memory_order_relaxed);
  while (len > 0 && d[len - 1] >= seq) len--;
  atomic_store_explicit(&v->len, len, memory_order_release);
}

static void seqvec_free(bp__seqvec *v) { free(atomic_load(&v->data)); }

/* ---- init / free ---- */

static bool name_table_resize(bp__index *ix, uint32_t slots);
static bool id_table_resize(bp__index *ix, uint64_t slots);

bp_status bp__index_init(bp__index *ix) {
  memset(ix, 0, sizeof *ix);
  ix->chunks = calloc(BP__MAX_CHUNKS, sizeof *ix->chunks);
  ix->kinds = calloc(65536, sizeof *ix->kinds);
  ix->name_cap = 64;
  bp__name **names = calloc(ix->name_cap, sizeof *names);
  atomic_store(&ix->names, names);
  if (!ix->chunks || !ix->kinds || !names || !name_table_resize(ix, 128) || !id_table_resize(ix, 1024)) {
    bp__index_free(ix);
    return bp__fail(BP_ENOMEM, "index: out of memory");
  }
  bp__name *empty;
  if (bp__index_intern(ix, "", 0, &empty) != BP_OK) {
    bp__index_free(ix);
    return BP_ENOMEM;
  }
  return BP_OK;
}

void bp__index_free(bp__index *ix) {
  if (ix->chunks) {
    for (uint32_t i = 0; i < BP__MAX_CHUNKS; i++) {
      bp__ientry *c = atomic_load(&ix->chunks[i]);
      if (!c) break;
      free(c);
    }
    free(ix->chunks);
  }
  bp__name **names = atomic_load(&ix->names);
  uint32_t n = atomic_load(&ix->name_count);
  for (uint32_t i = 0; names && i < n; i++) {
    seqvec_free(&names[i]->as_entity);
    seqvec_free(&names[i]->as_scope);
    free(names[i]->str);
    free(names[i]);
  }
  free(names);
  free(atomic_load(&ix->name_table));
  free(atomic_load(&ix->id_table));
  for (unsigned k = 0; ix->kinds && k < 65536; k++) {
    bp__seqvec *v = atomic_load(&ix->kinds[k]);
    if (v) { seqvec_free(v); free(v); }
  }
  free(ix->kinds);
  ix->kinds = NULL;
  for (int c = 0; c < 16; c++) seqvec_free(&ix->categories[c]);
  while (ix->retired) {
    bp__retired *r = ix->retired;
    ix->retired = r->next;
    free(r->ptr);
    free(r);
  }
  memset(ix, 0, sizeof *ix);
}

/* ---- names ---- */

static bool name_table_resize(bp__index *ix, uint32_t slots) {
  bp__nametable *old = atomic_load_explicit(&ix->name_table, memory_order_relaxed);
  bp__retired *node;
  bp__nametable *t = alloc_replacement(old, 1, sizeof *t + (size_t)slots * sizeof t->slots[0], true, &node);
  if (!t) return false;
  uint32_t mask = t->mask = slots - 1;
  bp__name **names = atomic_load_explicit(&ix->names, memory_order_relaxed);
  uint32_t n = atomic_load_explicit(&ix->name_count, memory_order_relaxed);
  for (uint32_t i = 0; i < n; i++) {
    uint32_t h = names[i]->hash & mask;
    while (atomic_load_explicit(&t->slots[h], memory_order_relaxed)) h = (h + 1) & mask;
    atomic_store_explicit(&t->slots[h], i + 1, memory_order_relaxed);
  }
  atomic_store_explicit(&ix->name_table, t, memory_order_release);
  retire(ix, node, old);
  return true;
}

bp__name *bp__index_find_name(const bp__index *ix, const char *s, size_t len) {
  const bp__nametable *t = atomic_load_explicit(&ix->name_table, memory_order_acquire);
  uint32_t h = hash_bytes(s, len);
  for (uint32_t i = h & t->mask;; i = (i + 1) & t->mask) {
    uint32_t slot = atomic_load_explicit(&t->slots[i], memory_order_acquire);
    if (!slot) return NULL;
    /* Loaded after the slot: the array that holds its name was published
     * before the slot was (an array loaded earlier may be too short). */
    bp__name **names = atomic_load_explicit(&ix->names, memory_order_acquire);
    bp__name *nm = names[slot - 1];
    if (nm->hash == h && nm->len == len && memcmp(nm->str, s, len) == 0) return nm;
  }
}

bp_status bp__index_intern(bp__index *ix, const char *s, size_t len, bp__name **out) {
  bp__name *found = bp__index_find_name(ix, s, len);
  if (found) { *out = found; return BP_OK; }

  uint32_t n = atomic_load_explicit(&ix->name_count, memory_order_relaxed);
  uint32_t slots = atomic_load_explicit(&ix->name_table, memory_order_relaxed)->mask + 1;
  if ((uint64_t)(n + 1) * 2 > slots && !name_table_resize(ix, slots * 2))
    return bp__fail(BP_ENOMEM, "index: out of memory growing the name table");
  bp__name **names = atomic_load_explicit(&ix->names, memory_order_relaxed);
  if (n == ix->name_cap) {
    bp__retired *node;
    bp__name **nn = alloc_replacement(names, (size_t)ix->name_cap * 2, sizeof *nn, false, &node);
    if (!nn) return bp__fail(BP_ENOMEM, "index: out of memory growing the names");
    memcpy(nn, names, sizeof *nn * n);
    atomic_store_explicit(&ix->names, nn, memory_order_release);
    retire(ix, node, names);
    names = nn;
    ix->name_cap *= 2;
  }
  bp__name *nm = calloc(1, sizeof *nm);
  char *str = malloc(len + 1);
  if (!nm || !str) {
    free(nm);
    free(str);
    return bp__fail(BP_ENOMEM, "index: out of memory interning a name");
  }
  memcpy(str, s, len);
  str[len] = '\0';
  nm->str = str;
  nm->len = (uint32_t)len;
  nm->hash = hash_bytes(s, len);
  nm->id = n;
  names[n] = nm;
  atomic_store_explicit(&ix->name_count, n + 1, memory_order_release);
  bp__nametable *t = atomic_load_explicit(&ix->name_table, memory_order_relaxed);
  uint32_t h = nm->hash & t->mask;
  while (atomic_load_explicit(&t->slots[h], memory_order_relaxed)) h = (h + 1) & t->mask;
  atomic_store_explicit(&t->slots[h], n + 1, memory_order_release);
  *out = nm;
  return BP_OK;
}

/* ---- ids ---- */

static inline uint64_t id_slot(uint64_t hash, uint64_t seq) { return hash << 32 | (seq + 1); }
static inline uint32_t slot_seq1(uint64_t v) { return (uint32_t)v; }
static inline uint32_t slot_hash(uint64_t v) { return (uint32_t)(v >> 32); }

static inline uint64_t slot_key(const bp__idslot *t, uint64_t i) {
  return atomic_load_explicit(&t[i].key, memory_order_acquire);
}

/* The table grows past 80% full: probes compare hash halves in the slots
 * (four to a cache line), so a long probe costs little, and a smaller table
 * misses the cache less. */
static inline bool id_table_full(uint64_t used, uint64_t slots) { return used * 5 > slots * 4; }

static bool id_table_resize(bp__index *ix, uint64_t slots) {
  bp__idtable *old = atomic_load_explicit(&ix->id_table, memory_order_relaxed);
  bp__retired *node;
  bp__idtable *tb = alloc_replacement(old, 1, sizeof *tb + slots * sizeof tb->slots[0], true, &node);
  if (!tb) return false;
  bp__idslot *t = tb->slots;
  uint64_t mask = tb->mask = slots - 1;
  uint64_t old_slots = old ? old->mask + 1 : 0;
  uint64_t used = 0;
  for (uint64_t i = 0; i < old_slots; i++) {
    uint64_t v = atomic_load_explicit(&old->slots[i].key, memory_order_relaxed);
    if (!v || slot_seq1(v) - 1 >= ix->count) continue;  /* drop slots of rolled-back entries */
    /* The stored half of the hash places the slot in any table of up to 2^32
     * slots; past that the entry supplies the rest. */
    uint64_t h = mask <= UINT32_MAX ? slot_hash(v) : hash_id(bp__index_at(ix, slot_seq1(v) - 1)->event_id);
    h &= mask;
    while (atomic_load_explicit(&t[h].key, memory_order_relaxed)) h = (h + 1) & mask;
    t[h].where = old->slots[i].where;
    atomic_store_explicit(&t[h].key, v, memory_order_relaxed);
    used++;
  }
  atomic_store_explicit(&ix->id_table, tb, memory_order_release);
  ix->id_used = used;
  retire(ix, node, old);
  return true;
}

/* A walk over the slots an id may be in, from its home slot to the first
 * empty one, stopping only at slots whose hash half matches. */
typedef struct id_probe {
  const bp__idslot *t;
  uint64_t mask, i;
  uint32_t hash;
} id_probe;

static id_probe probe_start(const bp__index *ix, bp_id id) {
  id_probe p;
  const bp__idtable *tb = atomic_load_explicit(&ix->id_table, memory_order_acquire);
  p.mask = tb->mask;
  p.t = tb->slots;
  uint64_t h = hash_id(id);
  p.i = h & p.mask;
  p.hash = (uint32_t)h;
  return p;
}

/* The key of the next matching slot (its slot in *slot), or 0 at the end. */
static uint64_t probe_next(id_probe *p, const bp__idslot **slot) {
  for (;; p->i = (p->i + 1) & p->mask) {
    uint64_t v = slot_key(p->t, p->i);
    if (!v) return 0;
    if (slot_hash(v) == p->hash) {
      *slot = &p->t[p->i];
      p->i = (p->i + 1) & p->mask;
      return v;
    }
  }
}

bool bp__index_frame_hint(const bp__index *ix, bp_id id, uint64_t limit, uint64_t *segment_id, uint64_t *offset) {
  id_probe p = probe_start(ix, id);
  const bp__idslot *slot;
  for (uint64_t v; (v = probe_next(&p, &slot));) {
    if (slot_seq1(v) - 1 >= limit) continue;
    uint64_t where = slot->where;
    *segment_id = where >> BP__WHERE_OFFSET_BITS;
    *offset = where & ((1ull << BP__WHERE_OFFSET_BITS) - 1);
    return where != 0;
  }
  return false;
}

bool bp__index_find_id(const bp__index *ix, bp_id id, uint64_t limit, uint64_t *seq) {
  id_probe p = probe_start(ix, id);
  const bp__idslot *slot;
  for (uint64_t v; (v = probe_next(&p, &slot));) {
    if (slot_seq1(v) - 1 < limit && bp_id_eq(bp__index_at(ix, slot_seq1(v) - 1)->event_id, id)) {
      *seq = slot_seq1(v) - 1;
      return true;
    }
  }
  return false;
}

/* ---- entries ---- */

/* Chunk ci of the entries, allocated on first use; prefault to map all its
 * memory in at once (bulk loads) rather than a page at a time as entries
 * arrive. NULL when out of memory. */
static bp__ientry *chunk_for(bp__index *ix, uint32_t ci, bool prefault) {
  bp__ientry *chunk = atomic_load_explicit(&ix->chunks[ci], memory_order_relaxed);
  if (chunk) return chunk;
  chunk = malloc(sizeof *chunk * BP__CHUNK_SIZE);
  if (!chunk) return NULL;
  if (prefault) bp__os_prefault_write(chunk, sizeof *chunk * BP__CHUNK_SIZE);
  atomic_store_explicit(&ix->chunks[ci], chunk, memory_order_release);
  return chunk;
}

bp_status bp__index_push(bp__index *ix, const bp__ientry *e) {
  uint64_t seq = ix->count;
  if (seq >= (uint64_t)BP__MAX_CHUNKS * BP__CHUNK_SIZE - 1)
    return bp__fail(BP_ELIMIT, "index: the store holds the maximum of %llu events",
                    (unsigned long long)seq);
  bp__ientry *chunk = chunk_for(ix, (uint32_t)(seq >> BP__CHUNK_SHIFT), false);
  if (!chunk) return bp__fail(BP_ENOMEM, "index: out of memory for entries");
  uint64_t id_slots = atomic_load_explicit(&ix->id_table, memory_order_relaxed)->mask + 1;
  if (id_table_full(ix->id_used + 1, id_slots) && !id_table_resize(ix, id_slots * 2))
    return bp__fail(BP_ENOMEM, "index: out of memory growing the id table");

  bp__name **names = atomic_load_explicit(&ix->names, memory_order_relaxed);
  bp__seqvec *kind = atomic_load_explicit(&ix->kinds[e->kind], memory_order_relaxed);
  if (!kind) {
    kind = calloc(1, sizeof *kind);
    if (!kind) return bp__fail(BP_ENOMEM, "index: out of memory");
    atomic_store_explicit(&ix->kinds[e->kind], kind, memory_order_release);
  }
  chunk[seq & (BP__CHUNK_SIZE - 1)] = *e;
  ix->count = seq + 1;
  uint32_t s = (uint32_t)seq;
  if (!seqvec_push(ix, &names[e->entity]->as_entity, s) ||
      !seqvec_push(ix, &names[e->scope]->as_scope, s) || !seqvec_push(ix, kind, s) ||
      !seqvec_push(ix, &ix->categories[bp_kind_category(e->kind)], s)) {
    bp__index_rollback(ix, seq);
    return bp__fail(BP_ENOMEM, "index: out of memory growing a stream");
  }

  bp__idtable *tb = atomic_load_explicit(&ix->id_table, memory_order_relaxed);
  bp__idslot *t = tb->slots;
  uint64_t mask = tb->mask, hash = hash_id(e->event_id), h = hash & mask;
  while (atomic_load_explicit(&t[h].key, memory_order_relaxed)) h = (h + 1) & mask;
  bool fits = e->offset < (1ull << BP__WHERE_OFFSET_BITS) && e->segment_id < (1u << (64 - BP__WHERE_OFFSET_BITS));
  t[h].where = fits ? (uint64_t)e->segment_id << BP__WHERE_OFFSET_BITS | e->offset : 0;
  atomic_store_explicit(&t[h].key, id_slot(hash, s), memory_order_release);
  ix->id_used++;
  return BP_OK;
}

void bp__index_prefetch_id(const bp__index *ix, bp_id id) {
  const bp__idtable *tb = atomic_load_explicit(&ix->id_table, memory_order_relaxed);
  __builtin_prefetch(&tb->slots[hash_id(id) & tb->mask], 1);
}

bp_status bp__index_reserve(bp__index *ix, uint64_t more) {
  /* The entries' memory too, faulted in a chunk per call: a page fault per
   * 4 KiB cost a reopen of 100k events about a tenth of its time. Only the
   * chunks the new entries fill: a last chunk they fill in part faults in as
   * entries arrive, and holds no memory it does not use. */
  uint64_t end = ix->count + more; /* entries [count, end) */
  for (uint64_t ci = ix->count >> BP__CHUNK_SHIFT; ci < (end >> BP__CHUNK_SHIFT) && ci < BP__MAX_CHUNKS; ci++) {
    bp__ientry *chunk = chunk_for(ix, (uint32_t)ci, true);
    if (!chunk) return bp__fail(BP_ENOMEM, "index: out of memory for entries");
  }
  uint64_t slots = atomic_load_explicit(&ix->id_table, memory_order_relaxed)->mask + 1, want = slots;
  while (id_table_full(ix->id_used + more + 1, want)) want *= 2;
  if (want != slots && !id_table_resize(ix, want))
    return bp__fail(BP_ENOMEM, "index: out of memory sizing the id table for %llu events",
                    (unsigned long long)(ix->id_used + more));
  return BP_OK;
}

void bp__index_publish(bp__index *ix) {
  atomic_store_explicit(&ix->visible, ix->count, memory_order_release);
}

void bp__index_rollback(bp__index *ix, uint64_t to_count) {
  for (uint64_t seq = to_count; seq < ix->count; seq++) {
    const bp__ientry *e = bp__index_at(ix, seq);
    bp__name **names = atomic_load_explicit(&ix->names, memory_order_relaxed);
    seqvec_truncate(&names[e->entity]->as_entity, (uint32_t)to_count);
    seqvec_truncate(&names[e->scope]->as_scope, (uint32_t)to_count);
    bp__seqvec *k = atomic_load_explicit(&ix->kinds[e->kind], memory_order_relaxed);
    if (k) seqvec_truncate(k, (uint32_t)to_count);
    seqvec_truncate(&ix->categories[bp_kind_category(e->kind)], (uint32_t)to_count);
  }
  /* Stale id slots stay: lookups check the entry they point at. */
  if (to_count < ix->count) ix->count = to_count;
}
