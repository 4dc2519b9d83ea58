/* index.c - the index: entries, names, gens and runs (see the concurrency essay in index.h). */
#include "store/index.h"
#include "store/os.h"
#include "wire/records.h"

/* Arrays that readers may still hold are not freed when replaced but kept on
 * a retired list until their owner is freed. A replacement is allocated
 * together with the list node that will keep the old array (none when old is
 * NULL): both or neither, so that running out of memory leaves the index as
 * it was rather than losing track of the old array. zero: calloc's zeroed
 * memory. */
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

static void retire(bp__retired **list, bp__retired *node, void *old) {
  if (!old) return;
  node->ptr = old;
  node->next = *list;
  *list = node;
}

static void retired_free(bp__retired **list) {
  while (*list) {
    bp__retired *r = *list;
    *list = r->next;
    free(r->ptr);
    free(r);
  }
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

static inline bp__ixview *view_of(const bp__index *ix) {
  return atomic_load_explicit(&ix->view, memory_order_acquire);
}

/* ---- seqvec ---- */

static bool seqvec_push(bp__retired **retired, bp__seqvec *v, uint32_t seq) {
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
    retire(retired, node, d);
    d = nd;
    v->cap = cap;
  }
  d[len] = seq;
  atomic_store_explicit(&v->len, len + 1, memory_order_release);
  return true;
}

/* Removes trailing items at or above seq (they were never visible). */
static void seqvec_truncate(bp__seqvec *v, uint32_t seq) {
  if (!v) return;
  uint32_t len = atomic_load_explicit(&v->len, memory_order_relaxed);
  const uint32_t *d = atomic_load_explicit(&v->data, memory_order_relaxed);
  while (len > 0 && d[len - 1] >= seq) len--;
  atomic_store_explicit(&v->len, len, memory_order_release);
}

static void seqvec_free(bp__seqvec *v) { free(atomic_load(&v->data)); }

/* ---- streams by name id ---- */

static bp__seqvec *streams_get(const bp__streams *st, uint32_t id) {
  uint32_t cap = atomic_load_explicit(&st->cap, memory_order_acquire);
  if (id >= cap) return NULL;
  _Atomic(bp__seqvec *) *v = atomic_load_explicit(&st->v, memory_order_acquire);
  return atomic_load_explicit(&v[id], memory_order_acquire);
}

/* The stream of name id in st, created when absent (writer). */
static bp__seqvec *streams_make(bp__streams *st, bp__retired **retired, uint32_t id) {
  uint32_t cap = atomic_load_explicit(&st->cap, memory_order_relaxed);
  _Atomic(bp__seqvec *) *v = atomic_load_explicit(&st->v, memory_order_relaxed);
  if (id >= cap) {
    uint32_t ncap = cap ? cap : 64;
    while (ncap <= id) ncap *= 2;
    bp__retired *node;
    _Atomic(bp__seqvec *) *nv = alloc_replacement(v, ncap, sizeof *nv, true, &node);
    if (!nv) return NULL;
    for (uint32_t i = 0; i < cap; i++)
      atomic_store_explicit(&nv[i], atomic_load_explicit(&v[i], memory_order_relaxed), memory_order_relaxed);
    atomic_store_explicit(&st->v, nv, memory_order_release);
    atomic_store_explicit(&st->cap, ncap, memory_order_release);
    retire(retired, node, (void *)v);
    v = nv;
  }
  bp__seqvec *sv = atomic_load_explicit(&v[id], memory_order_relaxed);
  if (!sv) {
    if (!(sv = calloc(1, sizeof *sv))) return NULL;
    atomic_store_explicit(&v[id], sv, memory_order_release);
  }
  return sv;
}

static void streams_free(bp__streams *st) {
  uint32_t cap = atomic_load(&st->cap);
  _Atomic(bp__seqvec *) *v = atomic_load(&st->v);
  for (uint32_t i = 0; i < cap; i++) {
    bp__seqvec *sv = atomic_load(&v[i]);
    if (sv) {
      seqvec_free(sv);
      free(sv);
    }
  }
  free((void *)v);
}

/* ---- gens ---- */

static bool id_table_resize(bp__gen *g, const bp__index *ix, uint64_t slots);

static bp__gen *gen_new(const bp__index *ix, uint64_t first) {
  bp__gen *g = calloc(1, sizeof *g);
  if (!g) return NULL;
  g->first = first;
  g->kinds = bp__os_zalloc(65536 * sizeof *g->kinds);
  if (!g->kinds || !id_table_resize(g, ix, 1024)) {
    bp__os_zfree(g->kinds, 65536 * sizeof *g->kinds);
    free(g);
    return NULL;
  }
  return g;
}

static void gen_free(bp__gen *g) {
  if (!g) return;
  streams_free(&g->ent);
  streams_free(&g->scope);
  for (uint32_t i = 0; i < g->nkinds; i++) {
    bp__seqvec *v = atomic_load(&g->kinds[g->kind_list[i]]);
    seqvec_free(v);
    free(v);
  }
  free(g->kind_list);
  bp__os_zfree(g->kinds, 65536 * sizeof *g->kinds);
  for (int c = 0; c < 16; c++) seqvec_free(&g->categories[c]);
  free(atomic_load(&g->id_table));
  retired_free(&g->retired);
  free(g);
}

/* ---- init / free ---- */

static bool name_table_resize(bp__index *ix, uint32_t slots);

bp_status bp__index_init(bp__index *ix) {
  memset(ix, 0, sizeof *ix);
  ix->efile.fd = -1;
  pthread_mutex_init(&ix->dead_lock, NULL);
  pthread_mutex_init(&ix->lazy_lock, NULL);
  ix->chunks = bp__os_zalloc(BP__MAX_CHUNKS * sizeof *ix->chunks);
  ix->name_cap = 64;
  bp__name **names = calloc(ix->name_cap, sizeof *names);
  atomic_store(&ix->names, names);
  bp__ixview *v = calloc(1, sizeof *v);
  bp__runset *rs = calloc(1, sizeof *rs);
  bp__gen *g = gen_new(ix, 0);
  if (v && rs && g) {
    v->runs = rs;
    v->ngens = 1;
    v->gens[0] = g;
    atomic_store(&ix->view, v);
    ix->cur = g;
  } else {
    free(v);
    free(rs);
    gen_free(g);
  }
  if (!ix->chunks || !names || !ix->cur || !name_table_resize(ix, 128)) {
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

static void dead_free(bp__dead *d) {
  free(d->view);
  free(d->runset);
  gen_free(d->gen);
  for (uint32_t i = 0; i < d->nunmap; i++) bp__run_unmap(&d->unmap[i]);
  free(d->unmap);
  free(d);
}

void bp__index_free(bp__index *ix) {
  if (ix->chunks) {
    for (uint32_t i = ix->heap_from; i < BP__MAX_CHUNKS; i++) {
      bp__ientry *c = atomic_load(&ix->chunks[i]);
      if (!c) break;
      free(c);
    }
    bp__os_zfree(ix->chunks, BP__MAX_CHUNKS * sizeof *ix->chunks);
  }
  if (ix->efile_open) bp__cfile_close(&ix->efile);
  bp__name **names = atomic_load(&ix->names);
  uint32_t n = atomic_load(&ix->name_count);
  for (uint32_t i = 0; names && i < n; i++) {
    free(names[i]->str);
    free(names[i]);
  }
  free(names);
  free(atomic_load(&ix->name_table));
  retired_free(&ix->retired);
  bp__ixview *v = atomic_load(&ix->view);
  if (v) {
    for (uint32_t i = 0; i < v->ngens; i++) gen_free(v->gens[i]);
    for (uint32_t i = 0; v->runs && i < v->runs->n; i++) bp__run_unmap(&v->runs->runs[i]);
    free(v->runs);
    free(v);
  }
  while (ix->dead) {
    bp__dead *d = ix->dead;
    ix->dead = d->next;
    dead_free(d);
  }
  pthread_mutex_destroy(&ix->dead_lock);
  pthread_mutex_destroy(&ix->lazy_lock);
  retired_free(&ix->repaired);
  free((void *)ix->sums);
  memset(ix, 0, sizeof *ix);
  ix->efile.fd = -1;
}

bp__ientry *bp__index_chunk_slow(const bp__index *cix, uint32_t ci) {
  bp__index *ix = (bp__index *)cix; /* installing a checked chunk changes no answer */
  pthread_mutex_lock(&ix->lazy_lock);
  bp__ientry *chunk = atomic_load_explicit(&ix->chunks[ci], memory_order_acquire);
  if (!chunk && ci < ix->lazy_end) {
    bp_error saved = *bp_last_error(); /* a reader's error stays its own */
    uint8_t *p = bp__cfile_chunk(&ix->efile, ci);
    if (p && bp__crc32(p, sizeof(bp__ientry) * BP__CHUNK_SIZE) == ix->sums[ci]) {
      chunk = (bp__ientry *)p;
    } else {
      bp__retired *node = malloc(sizeof *node);
      chunk = node && ix->repair ? ix->repair(ix->repair_ctx, ci) : NULL;
      if (chunk) {
        node->ptr = chunk;
        node->next = ix->repaired;
        ix->repaired = node;
      } else {
        free(node);
      }
    }
    bp__set_error(&saved);
    if (chunk) atomic_store_explicit(&ix->chunks[ci], chunk, memory_order_release);
  }
  pthread_mutex_unlock(&ix->lazy_lock);
  /* Repair returns a chunk whenever it has memory (zeroed entries where the
   * log fails too, which every read of those events reports). Without
   * memory, entries that no read accepts (length 0), and the next touch
   * tries again. */
  static const bp__ientry none[BP__CHUNK_SIZE];
  return chunk ? chunk : (bp__ientry *)none;
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
  retire(&ix->retired, node, old);
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
    retire(&ix->retired, node, names);
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
  nm->head_known = true; /* new: no events yet */
  names[n] = nm;
  atomic_store_explicit(&ix->name_count, n + 1, memory_order_release);
  bp__nametable *t = atomic_load_explicit(&ix->name_table, memory_order_relaxed);
  uint32_t h = nm->hash & t->mask;
  while (atomic_load_explicit(&t->slots[h], memory_order_relaxed)) h = (h + 1) & t->mask;
  atomic_store_explicit(&t->slots[h], n + 1, memory_order_release);
  *out = nm;
  return BP_OK;
}

void bp__index_entity_head(bp__index *ix, bp__name *nm) {
  if (nm->head_known) return;
  nm->head_known = true;
  nm->next_clock = 0;
  bp__stream st;
  bp__index_stream(ix, BP__STREAM_ENTITY, nm->id, ix->count, &st);
  if (st.total == 0) return;
  const bp__ientry *e = bp__index_at(ix, bp__stream_item(&st, st.total - 1));
  nm->next_clock = e->clock + 1;
  nm->last_wall_ms = e->wall_ms;
  memcpy(nm->last_hash, e->event_hash, 32);
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

static bool id_table_resize(bp__gen *g, const bp__index *ix, uint64_t slots) {
  bp__idtable *old = atomic_load_explicit(&g->id_table, memory_order_relaxed);
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
    uint64_t h = mask <= UINT32_MAX ? slot_hash(v) : bp__hash_id(bp__index_at(ix, slot_seq1(v) - 1)->event_id);
    h &= mask;
    while (atomic_load_explicit(&t[h].key, memory_order_relaxed)) h = (h + 1) & mask;
    t[h].where = old->slots[i].where;
    atomic_store_explicit(&t[h].key, v, memory_order_relaxed);
    used++;
  }
  atomic_store_explicit(&g->id_table, tb, memory_order_release);
  g->id_used = used;
  retire(&g->retired, node, old);
  return true;
}

/* A walk over the slots an id may be in, from its home slot to the first
 * empty one, stopping only at slots whose hash half matches. */
typedef struct id_probe {
  const bp__idslot *t;
  uint64_t mask, i;
  uint32_t hash;
} id_probe;

static id_probe probe_start(const bp__gen *g, uint64_t h) {
  id_probe p;
  const bp__idtable *tb = atomic_load_explicit(&g->id_table, memory_order_acquire);
  p.mask = tb->mask;
  p.t = tb->slots;
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

/* The first slot of the gens, newest first, whose hash half is id's, whose
 * sequence is below limit and, with check, whose entry holds id. */
static const bp__idslot *gens_find(const bp__index *ix, const bp__ixview *v, bp_id id, uint64_t h, uint64_t limit,
                                   bool check, uint64_t *key) {
  for (uint32_t g = v->ngens; g-- > 0;) {
    id_probe p = probe_start(v->gens[g], h);
    const bp__idslot *slot;
    for (uint64_t k; (k = probe_next(&p, &slot));) {
      if (slot_seq1(k) - 1 >= limit) continue;
      if (check && !bp_id_eq(bp__index_at(ix, slot_seq1(k) - 1)->event_id, id)) continue;
      *key = k;
      return slot;
    }
  }
  return NULL;
}

bool bp__index_frame_hint(const bp__index *ix, bp_id id, uint64_t limit, uint64_t *segment_id, uint64_t *offset) {
  uint64_t key;
  const bp__idslot *slot = gens_find(ix, view_of(ix), id, bp__hash_id(id), limit, false, &key);
  if (!slot) return false;
  uint64_t where = slot->where;
  *segment_id = where >> BP__WHERE_OFFSET_BITS;
  *offset = where & ((1ull << BP__WHERE_OFFSET_BITS) - 1);
  return where != 0;
}

static const bp__ientry *entry_at(void *ctx, uint64_t seq) { return bp__index_at(ctx, seq); }

static void log_run(void *ctx, const char *msg) {
  const bp__index *ix = ctx;
  if (ix->log) ix->log(ix->log_ctx, msg);
}

/* What a reader needs to replace a damaged run (run.h). */
static bp__run_fix fix_of(const bp__index *ix) {
  return (bp__run_fix){bp__index_name_count(ix), entry_at, (void *)ix, log_run, (void *)ix};
}

bool bp__index_find_id(const bp__index *ix, bp_id id, uint64_t limit, uint64_t *seq) {
  const bp__ixview *v = view_of(ix);
  uint64_t h = bp__hash_id(id), key;
  if (gens_find(ix, v, id, h, limit, true, &key)) {
    *seq = slot_seq1(key) - 1;
    return true;
  }
  const bp__runset *rs = v->runs;
  bp__run_fix fix = fix_of(ix);
  for (uint32_t r = rs->n; r-- > 0;)
    if (bp__run_may_hold(&rs->runs[r], id) && bp__run_find(&rs->runs[r], id, h, limit, seq, &fix)) return true;
  return false;
}

/* ---- streams ---- */

static const bp__seqvec *gen_stream(const bp__gen *g, int what, uint32_t key) {
  switch (what) {
    case BP__STREAM_ENTITY: return streams_get(&g->ent, key);
    case BP__STREAM_SCOPE: return streams_get(&g->scope, key);
    case BP__STREAM_KIND: return key < 65536 ? atomic_load_explicit(&g->kinds[key], memory_order_acquire) : NULL;
    default: return key < 16 ? &g->categories[key] : NULL;
  }
}

void bp__index_stream(const bp__index *ix, int what, uint32_t key, uint64_t limit, bp__stream *out) {
  const bp__ixview *v = view_of(ix);
  out->n = 0;
  out->total = 0;
  bp__run_fix fix = fix_of(ix);
  for (uint32_t r = 0; r < v->runs->n; r++) {
    const uint32_t *p;
    uint32_t n;
    if (!bp__run_postings(&v->runs->runs[r], what, key, &p, &n, &fix)) continue;
    while (n > 0 && p[n - 1] >= limit) n--;
    if (!n) continue;
    out->p[out->n].v = p;
    out->p[out->n].n = n;
    out->n++;
    out->total += n;
  }
  for (uint32_t g = 0; g < v->ngens; g++) {
    const bp__seqvec *sv = gen_stream(v->gens[g], what, key);
    if (!sv) continue;
    uint32_t len = atomic_load_explicit(&sv->len, memory_order_acquire);
    const uint32_t *d = atomic_load_explicit(&sv->data, memory_order_acquire);
    /* Items are increasing: drop the tail at or above limit. */
    while (len > 0 && d[len - 1] >= limit) len--;
    if (!len) continue;
    out->p[out->n].v = d;
    out->p[out->n].n = len;
    out->n++;
    out->total += len;
  }
}

bool bp__index_stream_any(const bp__index *ix, int what, uint32_t key, uint64_t limit) {
  const bp__ixview *v = view_of(ix);
  bp__run_fix fix = fix_of(ix);
  /* Runs hold published events only, all below limit: their directories
   * answer without the postings. */
  for (uint32_t r = 0; r < v->runs->n; r++)
    if (v->runs->runs[r].ref.end <= limit && bp__run_count(&v->runs->runs[r], what, key, &fix)) return true;
  bp__stream st;
  bp__index_stream(ix, what, key, limit, &st);
  return st.total > 0;
}

uint32_t bp__stream_item(const bp__stream *st, uint64_t i) {
  for (uint32_t k = 0; k < st->n; k++) {
    if (i < st->p[k].n) return st->p[k].v[i];
    i -= st->p[k].n;
  }
  return 0;
}

uint64_t bp__stream_lower_bound(const bp__stream *st, uint64_t seq) {
  uint64_t base = 0;
  for (uint32_t k = 0; k < st->n; k++) {
    const uint32_t *v = st->p[k].v;
    uint32_t n = st->p[k].n;
    if (v[n - 1] < seq) {
      base += n;
      continue;
    }
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
      uint32_t mid = lo + (hi - lo) / 2;
      if (v[mid] < seq) lo = mid + 1;
      else hi = mid;
    }
    return base + lo;
  }
  return base;
}

void bp__stream_copy(const bp__stream *st, uint64_t from, uint64_t n, uint32_t *out) {
  for (uint32_t k = 0; k < st->n && n > 0; k++) {
    if (from >= st->p[k].n) {
      from -= st->p[k].n;
      continue;
    }
    uint64_t take = st->p[k].n - from < n ? st->p[k].n - from : n;
    memcpy(out, st->p[k].v + from, take * sizeof *out);
    out += take;
    n -= take;
    from = 0;
  }
}

/* ---- entries ---- */

/* Chunk ci of the entries, allocated on first use: a piece of index/entries
 * when it is open, else heap memory (prefault: map all its memory in at once,
 * for bulk loads). NULL when out of memory or disk space (error set). */
static bp__ientry *chunk_for(bp__index *ix, uint32_t ci, bool prefault) {
  bp__ientry *chunk = atomic_load_explicit(&ix->chunks[ci], memory_order_relaxed);
  if (chunk) return chunk;
  if (ci < ix->lazy_end) return bp__index_chunk_slow(ix, ci); /* in index/entries */
  if (ix->efile_open && ix->efile.writable && ci >= ix->heap_from) {
    uint8_t *p;
    if (bp__cfile_alloc(&ix->efile, ci, sizeof(bp__ientry), &p) != BP_OK) return NULL;
    chunk = (bp__ientry *)p;
    ix->heap_from = ci + 1;
  } else {
    chunk = malloc(sizeof *chunk * BP__CHUNK_SIZE);
    if (!chunk) {
      bp__fail(BP_ENOMEM, "index: out of memory for entries");
      return NULL;
    }
    if (prefault) bp__os_prefault_write(chunk, sizeof *chunk * BP__CHUNK_SIZE);
  }
  atomic_store_explicit(&ix->chunks[ci], chunk, memory_order_release);
  return chunk;
}

/* Adds entry seq (in its chunk, or about to be: e) to the newest gen's
 * streams and id table; count moves past it. */
static bp_status gen_add(bp__index *ix, uint64_t seq, const bp__ientry *e, bp__ientry *slot) {
  bp__gen *g = ix->cur;
  uint64_t id_slots = atomic_load_explicit(&g->id_table, memory_order_relaxed)->mask + 1;
  if (id_table_full(g->id_used + 1, id_slots) && !id_table_resize(g, ix, id_slots * 2))
    return bp__fail(BP_ENOMEM, "index: out of memory growing the id table");

  bp__seqvec *kind = atomic_load_explicit(&g->kinds[e->kind], memory_order_relaxed);
  if (!kind) {
    if (g->nkinds == g->kinds_cap) {
      uint32_t cap = g->kinds_cap ? g->kinds_cap * 2 : 16;
      uint16_t *l = realloc(g->kind_list, sizeof *l * cap);
      if (!l) return bp__fail(BP_ENOMEM, "index: out of memory");
      g->kind_list = l;
      g->kinds_cap = cap;
    }
    kind = calloc(1, sizeof *kind);
    if (!kind) return bp__fail(BP_ENOMEM, "index: out of memory");
    g->kind_list[g->nkinds++] = e->kind;
    atomic_store_explicit(&g->kinds[e->kind], kind, memory_order_release);
  }
  bp__seqvec *ent = streams_make(&g->ent, &g->retired, e->entity);
  bp__seqvec *scope = ent ? streams_make(&g->scope, &g->retired, e->scope) : NULL;
  if (!scope) return bp__fail(BP_ENOMEM, "index: out of memory for a stream");
  if (slot) *slot = *e;
  ix->count = seq + 1;
  uint32_t s = (uint32_t)seq;
  if (!seqvec_push(&g->retired, ent, s) || !seqvec_push(&g->retired, scope, s) ||
      !seqvec_push(&g->retired, kind, s) ||
      !seqvec_push(&g->retired, &g->categories[bp_kind_category(e->kind)], s)) {
    bp__index_rollback(ix, seq);
    return bp__fail(BP_ENOMEM, "index: out of memory growing a stream");
  }

  bp__idtable *tb = atomic_load_explicit(&g->id_table, memory_order_relaxed);
  bp__idslot *t = tb->slots;
  uint64_t mask = tb->mask, hash = bp__hash_id(e->event_id), h = hash & mask;
  while (atomic_load_explicit(&t[h].key, memory_order_relaxed)) h = (h + 1) & mask;
  bool fits = e->offset < (1ull << BP__WHERE_OFFSET_BITS) && e->segment_id < (1u << (64 - BP__WHERE_OFFSET_BITS));
  t[h].where = fits ? (uint64_t)e->segment_id << BP__WHERE_OFFSET_BITS | e->offset : 0;
  atomic_store_explicit(&t[h].key, id_slot(hash, s), memory_order_release);
  g->id_used++;
  return BP_OK;
}

bp_status bp__index_push(bp__index *ix, const bp__ientry *e) {
  uint64_t seq = ix->count;
  if (seq >= (uint64_t)BP__MAX_CHUNKS * BP__CHUNK_SIZE - 1)
    return bp__fail(BP_ELIMIT, "index: the store holds the maximum of %llu events",
                    (unsigned long long)seq);
  bp__ientry *chunk = chunk_for(ix, (uint32_t)(seq >> BP__CHUNK_SHIFT), false);
  if (!chunk) return bp_last_error()->code;
  /* index/entries grows a step at a time, ahead of the entries. */
  if (ix->efile_open && ix->efile.writable && (seq + 1) * sizeof(bp__ientry) > ix->efile.size) {
    uint64_t had = ix->efile.size;
    bp_status st = bp__cfile_reserve(&ix->efile, (seq + 1) * sizeof(bp__ientry));
    if (st) return st;
    /* The new step's pages mapped in at once (one call) rather than a fault
     * every 27 entries; within this chunk only, a hint. */
    uint64_t chunk_start = (seq >> BP__CHUNK_SHIFT) * (uint64_t)BP__CHUNK_SIZE * sizeof(bp__ientry);
    uint64_t from = had > chunk_start ? had - chunk_start : 0;
    uint64_t to = ix->efile.size - chunk_start;
    if (to > (uint64_t)BP__CHUNK_SIZE * sizeof(bp__ientry)) to = (uint64_t)BP__CHUNK_SIZE * sizeof(bp__ientry);
    if (to > from) (void)madvise((uint8_t *)chunk + from, to - from, BP__MADV_POPULATE_WRITE);
  }
  return gen_add(ix, seq, e, &chunk[seq & (BP__CHUNK_SIZE - 1)]);
}

bp_status bp__index_adopt(bp__index *ix) {
  uint64_t seq = ix->count;
  bp__ientry e = *bp__index_at(ix, seq);
  if (e.entity >= bp__index_name_count(ix) || e.scope >= bp__index_name_count(ix))
    return bp__fail(BP_ECORRUPT, "index entry %llu names an unknown name", (unsigned long long)seq);
  return gen_add(ix, seq, &e, NULL);
}

void bp__index_prefetch_id(const bp__index *ix, bp_id id) {
  const bp__idtable *tb = atomic_load_explicit(&ix->cur->id_table, memory_order_relaxed);
  __builtin_prefetch(&tb->slots[bp__hash_id(id) & tb->mask], 1);
}

bp_status bp__index_reserve(bp__index *ix, uint64_t more) {
  /* A gen that will be frozen takes at most a gen's worth. */
  if (ix->freeze && more > 2 * BP__GEN_EVENTS) more = 2 * BP__GEN_EVENTS;
  /* The entries' memory too, faulted in a chunk per call: a page fault per
   * 4 KiB cost a reopen of 100k events about a tenth of its time. Only the
   * chunks the new entries fill: a last chunk they fill in part faults in as
   * entries arrive, and holds no memory it does not use. */
  uint64_t end = ix->count + more; /* entries [count, end) */
  for (uint64_t ci = ix->count >> BP__CHUNK_SHIFT; ci < (end >> BP__CHUNK_SHIFT) && ci < BP__MAX_CHUNKS; ci++) {
    bp__ientry *chunk = chunk_for(ix, (uint32_t)ci, true);
    if (!chunk) return bp_last_error()->code;
  }
  bp__gen *g = ix->cur;
  uint64_t slots = atomic_load_explicit(&g->id_table, memory_order_relaxed)->mask + 1, want = slots;
  while (id_table_full(g->id_used + more + 1, want)) want *= 2;
  if (want != slots && !id_table_resize(g, ix, want))
    return bp__fail(BP_ENOMEM, "index: out of memory sizing the id table for %llu events",
                    (unsigned long long)(g->id_used + more));
  return BP_OK;
}

static void dead_push(bp__index *ix, bp__dead *d) {
  pthread_mutex_lock(&ix->dead_lock);
  d->next = ix->dead;
  ix->dead = d;
  pthread_mutex_unlock(&ix->dead_lock);
}

/* Starts a new gen at count, the full one frozen. Nothing changes when out
 * of memory (the next publish tries again). */
static void freeze(bp__index *ix) {
  bp__ixview *v = view_of(ix);
  if (v->ngens >= BP__MAX_GENS) return;
  bp__gen *g = gen_new(ix, ix->count);
  bp__ixview *nv = malloc(sizeof *nv);
  bp__dead *d = calloc(1, sizeof *d);
  if (!g || !nv || !d) {
    gen_free(g);
    free(nv);
    free(d);
    return;
  }
  *nv = *v;
  nv->gens[nv->ngens++] = g;
  atomic_store_explicit(&ix->view, nv, memory_order_release);
  ix->cur = g;
  d->view = v;
  dead_push(ix, d);
  if (ix->on_freeze) ix->on_freeze(ix->on_freeze_ctx);
}

void bp__index_publish(bp__index *ix) {
  atomic_store_explicit(&ix->visible, ix->count, memory_order_release);
  if (ix->freeze && ix->count - ix->cur->first >= BP__GEN_EVENTS) freeze(ix);
}

void bp__index_rollback(bp__index *ix, uint64_t to_count) {
  /* Unpublished entries are all in the newest gen: gens are frozen only at
   * publication. */
  bp__gen *g = ix->cur;
  for (uint64_t seq = to_count; seq < ix->count; seq++) {
    const bp__ientry *e = bp__index_at(ix, seq);
    seqvec_truncate(streams_get(&g->ent, e->entity), (uint32_t)to_count);
    seqvec_truncate(streams_get(&g->scope, e->scope), (uint32_t)to_count);
    seqvec_truncate(atomic_load_explicit(&g->kinds[e->kind], memory_order_relaxed), (uint32_t)to_count);
    seqvec_truncate(&g->categories[bp_kind_category(e->kind)], (uint32_t)to_count);
  }
  /* Stale id slots stay: lookups check the entry they point at, which is
   * cleared, so that a refused write leaves index/entries as it found it
   * (space allocated ahead is zeros). */
  for (uint64_t seq = to_count; seq < ix->count; seq++) memset(bp__index_at(ix, seq), 0, sizeof(bp__ientry));
  if (to_count < ix->count) ix->count = to_count;
}

/* ---- runs ---- */

bool bp__index_frozen(const bp__index *ix, uint64_t *first, uint64_t *end) {
  const bp__ixview *v = view_of(ix);
  if (v->ngens < 2) return false;
  *first = v->gens[0]->first;
  *end = v->gens[1]->first;
  return true;
}

bp_status bp__index_swap_runs(bp__index *ix, bp__run *covering, uint32_t from, uint32_t k, bp__run *merged) {
  bp__ixview *v = view_of(ix);
  bp__ixview *nv = malloc(sizeof *nv);
  bp__runset *rs = malloc(sizeof *rs);
  bp__dead *d = calloc(1, sizeof *d);
  bp__run *gone = k ? malloc(sizeof *gone * k) : NULL;
  bool full = covering && v->runs->n + 1 > BP__IX_MAX_RUNS, no_gen = covering && v->ngens < 2;
  if (!nv || !rs || !d || (k && !gone) || full || no_gen) {
    free(nv);
    free(rs);
    free(d);
    free(gone);
    if (full) return bp__fail(BP_ELIMIT, "index: %u runs already, the most there may be", BP__IX_MAX_RUNS);
    if (no_gen) return bp__fail(BP_EINVAL, "index: no frozen gen to replace by a run");
    return bp__fail(BP_ENOMEM, "index: out of memory replacing runs");
  }
  const bp__runset *old = v->runs;
  rs->n = 0;
  for (uint32_t i = 0; i < old->n; i++) {
    if (k && i == from) rs->runs[rs->n++] = *merged;
    if (k && i >= from && i < from + k) gone[i - from] = old->runs[i];
    else rs->runs[rs->n++] = old->runs[i];
  }
  rs->end = old->end;
  *nv = *v;
  nv->runs = rs;
  if (covering) {
    rs->runs[rs->n++] = *covering;
    rs->end = covering->ref.end;
    d->gen = v->gens[0];
    memmove(nv->gens, nv->gens + 1, sizeof nv->gens[0] * (nv->ngens - 1));
    nv->ngens--;
  }
  atomic_store_explicit(&ix->view, nv, memory_order_release);
  d->view = v;
  d->runset = (bp__runset *)old;
  d->unmap = gone;
  d->nunmap = k;
  dead_push(ix, d);
  return BP_OK;
}

bp_status bp__index_set_runs(bp__index *ix, const bp__run *runs, uint32_t n, uint64_t end) {
  bp__ixview *v = view_of(ix);
  if (n > BP__IX_MAX_RUNS) return bp__fail(BP_ECORRUPT, "index: %u runs is more than %u", n, BP__IX_MAX_RUNS);
  memcpy(v->runs->runs, runs, sizeof *runs * n);
  v->runs->n = n;
  v->runs->end = end;
  ix->cur->first = end;
  return BP_OK;
}

void bp__index_reclaim(bp__index *ix) {
  pthread_mutex_lock(&ix->dead_lock);
  bp__dead *d = ix->dead;
  ix->dead = NULL;
  pthread_mutex_unlock(&ix->dead_lock);
  while (d) {
    bp__dead *next = d->next;
    dead_free(d);
    d = next;
  }
}
