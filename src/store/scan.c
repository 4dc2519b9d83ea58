/* scan.c - the scan index in six layouts (see scan.h). */
#include "store/scan.h"
#include "store/os.h"
#include "wire/records.h"

#define CS BP__CHUNK_SIZE

typedef struct aos_rec {
  uint16_t kind;
  uint16_t pad;
  uint32_t clock, entity, scope;
} aos_rec;

typedef struct pair_es {
  uint32_t entity, scope;
} pair_es;

typedef struct pair_kc {
  uint16_t kind;
  uint16_t pad;
  uint32_t clock;
} pair_kc;

const char *bp__layout_name(bp_index_layout layout) {
  switch (layout) {
    case BP_INDEX_AOS: return "AoS";
    case BP_INDEX_SOA: return "SoA";
    case BP_INDEX_AOSOA8: return "AoSoA8";
    case BP_INDEX_AOSOA16: return "AoSoA16";
    case BP_INDEX_AOSOA64: return "AoSoA64";
    case BP_INDEX_SOAOS: return "SoAoS";
  }
  return "?";
}

/* Bytes of one tile of n events laid out as arrays: kinds, clocks, entities, scopes. */
static size_t soa_bytes(size_t n) { return n * (2 + 4 + 4 + 4); }

static size_t chunk_bytes(const bp__scan *sc) {
  switch (sc->layout) {
    case BP_INDEX_AOS: return CS * sizeof(aos_rec);
    case BP_INDEX_SOAOS: return CS * (sizeof(pair_es) + sizeof(pair_kc));
    default: return soa_bytes(CS); /* SOA is one tile of CS events */
  }
}

bp__scan_pred bp__scan_pred_of(const bp_region *r) {
  bp__scan_pred q;
  memset(&q, 0, sizeof q);
  q.any_scope = true;
  q.fact = BP_FACT_ANY;
  if (!r) return q;
  q.fact = r->fact;
  q.kind = r->kind;
  q.category = r->category;
  q.has_clock = r->has_clock_range;
  q.clock_min = r->clock_min;
  q.clock_max = r->clock_max;
  return q;
}

bp_status bp__scan_init(bp__scan *sc, bp_index_layout layout) {
  memset(sc, 0, sizeof *sc);
  sc->file.fd = -1;
  pthread_mutex_init(&sc->lazy_lock, NULL);
  sc->layout = layout;
  sc->tile = layout == BP_INDEX_AOSOA8 ? 8 : layout == BP_INDEX_AOSOA16 ? 16 : layout == BP_INDEX_AOSOA64 ? 64 : 0;
  sc->chunks = bp__os_zalloc(BP__MAX_CHUNKS * sizeof *sc->chunks);
  if (!sc->chunks) return bp__fail(BP_ENOMEM, "scan index: out of memory");
  return BP_OK;
}

void bp__scan_free(bp__scan *sc) {
  if (!sc->chunks) return;
  for (uint32_t i = sc->heap_from; i < BP__MAX_CHUNKS; i++) {
    uint8_t *c = atomic_load(&sc->chunks[i]);
    if (!c) break;
    free(c);
  }
  bp__os_zfree(sc->chunks, BP__MAX_CHUNKS * sizeof *sc->chunks);
  sc->chunks = NULL;
  if (sc->file_open) bp__cfile_close(&sc->file);
  sc->file_open = false;
  sc->heap_from = 0;
  while (sc->repaired) {
    bp__retired *r = sc->repaired;
    sc->repaired = r->next;
    free(r->ptr);
    free(r);
  }
  free((void *)sc->sums);
  sc->sums = NULL;
  sc->lazy_end = 0;
  pthread_mutex_destroy(&sc->lazy_lock);
}

bp_status bp__scan_open_file(bp__scan *sc, const char *path, bool writable, uint64_t count, bool *fresh) {
  bp_status st = bp__cfile_open(&sc->file, path, "BPXSCAN1", (uint32_t)sc->layout, chunk_bytes(sc), writable, fresh);
  if (st) return st;
  sc->file_open = true;
  if (*fresh) count = 0;
  uint32_t full = (uint32_t)(count >> BP__CHUNK_SHIFT), part = (uint32_t)(count & (CS - 1));
  if ((uint64_t)(full + (part != 0)) * chunk_bytes(sc) > sc->file.size)
    return bp__fail(BP_ECORRUPT, "%s is shorter than the index says", path);
  /* Full chunks are checked when first used (chunk_slow). */
  sc->lazy_end = full;
  sc->heap_from = full;
  if (writable) {
    /* The chunk the next event goes to, with its space, before any append. */
    uint8_t *c;
    if ((st = bp__cfile_alloc(&sc->file, full, chunk_bytes(sc), &c))) return st;
    atomic_store_explicit(&sc->chunks[full], c, memory_order_release);
    sc->heap_from = full + 1;
  }
  if (!writable && part) {
    uint8_t *from = bp__cfile_chunk(&sc->file, full), *c = malloc(chunk_bytes(sc));
    if (!from || !c) {
      free(c);
      return from ? bp__fail(BP_ENOMEM, "scan index: out of memory") : bp_last_error()->code;
    }
    memcpy(c, from, chunk_bytes(sc));
    atomic_store_explicit(&sc->chunks[full], c, memory_order_release);
  }
  return BP_OK;
}

int bp__scan_sync(bp__scan *sc) { return sc->file_open ? bp__cfile_sync(&sc->file) : 0; }

uint64_t bp__scan_tiles(const bp__scan *sc, uint64_t count) {
  return sc->tile ? (count + sc->tile - 1) / sc->tile : 0;
}

/* The arrays of the tile holding slot i of a chunk (SOA and AOSOA layouts). */
typedef struct tile_view {
  uint16_t *kind;
  uint32_t *clock, *entity, *scope;
  size_t at;           /* index of the slot within the tile */
} tile_view;

static tile_view tile_of(const bp__scan *sc, uint8_t *chunk, size_t i) {
  size_t n = sc->tile ? sc->tile : CS;
  uint8_t *t = chunk + (i / n) * soa_bytes(n);
  tile_view v = {(uint16_t *)t, (uint32_t *)(t + 2 * n), (uint32_t *)(t + 6 * n), (uint32_t *)(t + 10 * n), i % n};
  return v;
}

static uint8_t *chunk_slow(const bp__scan *csc, uint32_t ci);

/* Writes event i's fields into a chunk. */
static void put(const bp__scan *sc, uint8_t *chunk, size_t i, bp_kind kind, uint32_t clock, uint32_t entity,
                uint32_t scope) {
  switch (sc->layout) {
    case BP_INDEX_AOS: {
      aos_rec *r = (aos_rec *)chunk + i;
      *r = (aos_rec){kind, 0, clock, entity, scope};
      break;
    }
    case BP_INDEX_SOAOS: {
      ((pair_es *)chunk)[i] = (pair_es){entity, scope};
      ((pair_kc *)(chunk + CS * sizeof(pair_es)))[i] = (pair_kc){kind, 0, clock};
      break;
    }
    default: {
      tile_view v = tile_of(sc, chunk, i);
      v.kind[v.at] = kind;
      v.clock[v.at] = clock;
      v.entity[v.at] = entity;
      v.scope[v.at] = scope;
      break;
    }
  }
}

bp_status bp__scan_set(bp__scan *sc, uint64_t seq, bp_kind kind, uint32_t clock, uint32_t entity, uint32_t scope) {
  uint32_t ci = (uint32_t)(seq >> BP__CHUNK_SHIFT);
  uint8_t *chunk = atomic_load_explicit(&sc->chunks[ci], memory_order_relaxed);
  if (!chunk && ci < sc->lazy_end) chunk = chunk_slow(sc, ci); /* in index/scan */
  if (!chunk) {
    if (sc->file_open && sc->file.writable) {
      bp_status st = bp__cfile_alloc(&sc->file, ci, chunk_bytes(sc), &chunk);
      if (st) return st;
      sc->heap_from = ci + 1;
    } else if (!(chunk = malloc(chunk_bytes(sc)))) {
      return bp__fail(BP_ENOMEM, "scan index: out of memory");
    }
    atomic_store_explicit(&sc->chunks[ci], chunk, memory_order_release);
  }
  put(sc, chunk, seq & (CS - 1), kind, clock, entity, scope);
  return BP_OK;
}

size_t bp__scan_chunk_bytes(const bp__scan *sc) { return chunk_bytes(sc); }

bool bp__scan_chunk_clear_from(const bp__scan *sc, uint8_t *chunk, uint32_t from, bool fix) {
  bool clear = true;
  for (uint32_t i = from; i < CS; i++) {
    bool zero;
    switch (sc->layout) {
      case BP_INDEX_AOS: {
        const aos_rec *r = (const aos_rec *)chunk + i;
        zero = !r->kind && !r->pad && !r->clock && !r->entity && !r->scope;
        break;
      }
      case BP_INDEX_SOAOS: {
        const pair_es *es = (const pair_es *)chunk + i;
        const pair_kc *kc = (const pair_kc *)(chunk + CS * sizeof(pair_es)) + i;
        zero = !es->entity && !es->scope && !kc->kind && !kc->pad && !kc->clock;
        break;
      }
      default: {
        tile_view v = tile_of(sc, chunk, i);
        zero = !v.kind[v.at] && !v.clock[v.at] && !v.entity[v.at] && !v.scope[v.at];
        break;
      }
    }
    if (zero) continue;
    clear = false;
    if (!fix) break;
    put(sc, chunk, i, 0, 0, 0, 0);
  }
  return clear;
}

uint32_t bp__scan_chunk_crc(const bp__scan *sc, const uint8_t *chunk, uint32_t n) {
  if (n == CS) return bp__crc32(chunk, chunk_bytes(sc));
  /* A last chunk in part: every byte of its first n slots (padding too),
   * and nothing of the slots after them. */
  switch (sc->layout) {
    case BP_INDEX_AOS: return bp__crc32(chunk, (size_t)n * sizeof(aos_rec));
    case BP_INDEX_SOAOS:
      return bp__crc32_update(bp__crc32(chunk, (size_t)n * sizeof(pair_es)), chunk + CS * sizeof(pair_es),
                              (size_t)n * sizeof(pair_kc));
    default: {
      uint32_t crc = 0;
      for (uint32_t i = 0; i < n; i++) {
        tile_view v = tile_of(sc, (uint8_t *)chunk, i);
        crc = bp__crc32_update(crc, &v.kind[v.at], 2);
        crc = bp__crc32_update(crc, &v.clock[v.at], 4);
        crc = bp__crc32_update(crc, &v.entity[v.at], 4);
        crc = bp__crc32_update(crc, &v.scope[v.at], 4);
      }
      return crc;
    }
  }
}

/* Chunk ci below lazy_end, checked against its CRC or made again from the
 * index entries, and installed. */
static uint8_t *chunk_slow(const bp__scan *csc, uint32_t ci) {
  bp__scan *sc = (bp__scan *)csc; /* installing a checked chunk changes no answer */
  pthread_mutex_lock(&sc->lazy_lock);
  uint8_t *chunk = atomic_load_explicit(&sc->chunks[ci], memory_order_acquire);
  if (!chunk && ci < sc->lazy_end) {
    bp_error saved = *bp_last_error();
    uint8_t *p = bp__cfile_chunk(&sc->file, ci);
    if (p && bp__crc32(p, chunk_bytes(sc)) == sc->sums[ci]) {
      chunk = p;
    } else {
      bp__retired *node = malloc(sizeof *node);
      uint8_t *c = node ? malloc(chunk_bytes(sc)) : NULL;
      if (c) {
        for (uint32_t i = 0; i < CS; i++) {
          const bp__ientry *e = bp__index_at(sc->ix, (uint64_t)ci * CS + i);
          put(sc, c, i, e->kind, e->clock, e->entity, e->scope);
        }
        node->ptr = c;
        node->next = sc->repaired;
        sc->repaired = node;
        chunk = c;
      } else {
        free(node);
      }
    }
    bp__set_error(&saved);
    if (chunk) atomic_store_explicit(&sc->chunks[ci], chunk, memory_order_release);
  }
  pthread_mutex_unlock(&sc->lazy_lock);
  /* Without memory, zeros for this once (the next use tries again). */
  static uint8_t none[CS * 16];
  return chunk ? chunk : none;
}

static inline bool keep(const bp__scan_pred *p, bp_kind kind, uint32_t clock, uint32_t entity, uint32_t scope) {
  if (p->fact == BP_FACT_EXACT && kind != p->kind) return false;
  if (p->fact == BP_FACT_CATEGORY && (kind >> 12) != p->category) return false;
  if (p->has_clock && (clock < p->clock_min || clock > p->clock_max)) return false;
  if (!p->any_scope && scope != p->scope_id) return false;
  if (p->prefix_ok && !p->prefix_ok[entity]) return false;
  return true;
}

size_t bp__scan_filter(const bp__scan *sc, uint64_t from, uint64_t to, const bp__scan_pred *p, uint32_t *out,
                       size_t max, uint64_t *next) {
  size_t got = 0;
  uint64_t seq = from;
  while (seq < to && got < max) {
    uint8_t *chunk = atomic_load_explicit(&sc->chunks[seq >> BP__CHUNK_SHIFT], memory_order_acquire);
    if (BP__UNLIKELY(!chunk)) chunk = chunk_slow(sc, (uint32_t)(seq >> BP__CHUNK_SHIFT));
    size_t i = seq & (CS - 1);
    uint64_t chunk_end = (seq | (CS - 1)) + 1;
    size_t end = (size_t)((to < chunk_end ? to : chunk_end) - (seq - i));
    switch (sc->layout) {
      case BP_INDEX_AOS: {
        const aos_rec *r = (const aos_rec *)chunk;
        for (; i < end && got < max; i++)
          if (keep(p, r[i].kind, r[i].clock, r[i].entity, r[i].scope)) out[got++] = (uint32_t)(seq - (seq & (CS - 1)) + i);
        break;
      }
      case BP_INDEX_SOAOS: {
        const pair_es *es = (const pair_es *)chunk;
        const pair_kc *kc = (const pair_kc *)(chunk + CS * sizeof(pair_es));
        for (; i < end && got < max; i++)
          if (keep(p, kc[i].kind, kc[i].clock, es[i].entity, es[i].scope))
            out[got++] = (uint32_t)(seq - (seq & (CS - 1)) + i);
        break;
      }
      default: {
        size_t n = sc->tile ? sc->tile : CS;
        while (i < end && got < max) {
          tile_view v = tile_of(sc, chunk, i);
          size_t tile_end = i - v.at + n < end ? i - v.at + n : end;
          for (size_t k = v.at; i < tile_end && got < max; i++, k++)
            if (keep(p, v.kind[k], v.clock[k], v.entity[k], v.scope[k]))
              out[got++] = (uint32_t)(seq - (seq & (CS - 1)) + i);
        }
        break;
      }
    }
    seq = seq - (seq & (CS - 1)) + i;
  }
  *next = seq;
  return got;
}
