/*
 * reader.c - reading events and the index: get, queries, entry helpers.
 *
 * Every read first loads the index's visible count and ignores anything at
 * or above it, so a reader sees a gap-free prefix of the log (index.h).
 */
#include "store/store_impl.h"
#include "batpak/wire.h"

#include <inttypes.h>
#include <pthread.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <emmintrin.h>
#endif

/* Asks for every cache line of [p, p + len); reads nothing itself. */
static void prefetch_lines(const void *p, size_t len) {
  uintptr_t end = (uintptr_t)p + len;
  for (uintptr_t line = (uintptr_t)p & ~(uintptr_t)63; line < end; line += 64) __builtin_prefetch((const void *)line);
}

/* The entry of seq from its index record; names is the name table (any
 * version loaded after seq became visible). */
static inline void fill_entry(const bp__ientry *e, bp__name *const *names, uint64_t seq, bp_entry *out) {
  out->event_id = e->event_id;
  out->correlation_id = e->correlation_id;
  out->causation_id = e->causation_id;
  out->entity = names[e->entity]->str;
  out->scope = names[e->scope]->str;
  out->kind = e->kind;
  out->wall_ms = e->wall_ms;
  out->clock = e->clock;
  memcpy(out->hash_chain.prev_hash, e->prev_hash, 32);
  memcpy(out->hash_chain.event_hash, e->event_hash, 32);
  out->disk_pos.segment_id = e->segment_id;
  out->disk_pos.offset = e->offset;
  out->disk_pos.length = e->length;
  out->global_sequence = seq;
  out->reserved[0] = out->reserved[1] = 0;
}

void bp__entry_from_index(const bp_store *s, uint64_t seq, bp_entry *out) {
  fill_entry(bp__index_at(&s->ix, seq), atomic_load_explicit(&s->ix.names, memory_order_acquire), seq, out);
}

static bp_status not_found(bp_id id) {
  char hex[33];
  bp_id_to_hex(id, hex);
  return bp__fail(BP_ENOTFOUND, "event %s is not in the store", hex);
}

bp_status bp_get_entry(bp_store *s, bp_id id, bp_entry *out) {
  if (!s || !out) return bp__fail(BP_EINVAL, "bp_get_entry: NULL argument");
  uint64_t seq;
  bp__view_enter(s);
  bool found = bp__index_find_id(&s->ix, id, bp__index_visible(&s->ix), &seq);
  if (found) bp__entry_from_index(s, seq, out);
  bp__view_leave(s);
  return found ? BP_OK : not_found(id);
}

/* [off, off + len) of segment seg where it is mapped, else NULL; the lookup
 * (under the segment table's lock) is made again only for another segment or
 * for bytes past what the last one allowed. */
static const uint8_t *view_cached(bp_store *s, bp__evread *rd, uint64_t seg, uint64_t off, size_t len) {
  if (!rd->seg_map || rd->seg_id != seg || off > rd->seg_len || len > rd->seg_len - off) {
    rd->seg_id = seg;
    rd->seg_map = bp__segment_map(s, seg, &rd->seg_len);
  }
  return rd->seg_map && off <= rd->seg_len && len <= rd->seg_len - off ? rd->seg_map + off : NULL;
}

bp_status bp__read_frame(bp_store *s, uint64_t seq, bp__evread *rd) {
  const bp__ientry *e = bp__index_at(&s->ix, seq);
  uint32_t len = e->length;
  uint64_t seg = e->segment_id, off = e->offset;
  if (len < BP__FRAME_PREFIX)
    return bp__fail(BP_ECORRUPT, "segment %06" PRIu64 " offset %" PRIu64 ": frame length %u too short", seg, off, len);
  const uint8_t *frame = view_cached(s, rd, seg, off, len);
  if (frame) {
    /* Ask for every line of the frame at once: the CRC then waits for one
     * memory latency, not for one per line the prefetcher did not foresee. */
    prefetch_lines(frame, len);
  } else {
    rd->frame.len = 0;
    if (!bp__buf_reserve(&rd->frame, len)) return bp__fail(BP_ENOMEM, "out of memory reading a %u-byte frame", len);
    bp_status st = bp__segment_read(s, seg, off, rd->frame.data, len);
    if (st) return st;
    frame = rd->frame.data;
  }
  bp_status st = bp__frame_check(frame, len, seg, off);
  if (st) return st;
  rd->raw = frame;
  return BP_OK;
}

bp_status bp__read_event(bp_store *s, uint64_t seq, bp__evread *rd) {
  bp_status st = bp__read_frame(s, seq, rd);
  if (st) return st;
  const bp__ientry *e = bp__index_at(&s->ix, seq);
  uint32_t len = e->length;
  uint64_t seg = e->segment_id, off = e->offset;
  const uint8_t *frame = rd->raw;
  bp__frame f;
  if (bp__frame_decode_body(frame + BP__FRAME_PREFIX, len - BP__FRAME_PREFIX, &rd->scratch, &f) != BP_OK)
    return bp__fail_within(BP_ECORRUPT, "segment %06" PRIu64 " offset %" PRIu64 ": frame does not decode", seg, off);
  if (!bp_id_eq(f.header.event_id, e->event_id))
    return bp__fail(BP_ECORRUPT, "segment %06" PRIu64 " offset %" PRIu64 ": frame holds another event", seg, off);
  rd->ev.header = f.header;
  rd->ev.entity = bp__index_name(&s->ix, e->entity)->str;
  rd->ev.scope = bp__index_name(&s->ix, e->scope)->str;
  rd->ev.payload = f.payload;
  rd->ev.payload_len = f.payload_len;
  rd->ev.has_hash_chain = f.has_chain;
  rd->ev.hash_chain = f.chain;
  return BP_OK;
}

void bp__prefetch_entry(const bp_store *s, uint64_t seq) {
  const char *e = (const char *)bp__index_at(&s->ix, seq);
  /* The id at the start, the frame's place and the kind at the end. */
  __builtin_prefetch(e);
  __builtin_prefetch(e + offsetof(bp__ientry, offset));
  __builtin_prefetch(e + sizeof(bp__ientry) - 1);
}

void bp__prefetch_frame(bp_store *s, uint64_t seq, bp__evread *rd) {
  const bp__ientry *e = bp__index_at(&s->ix, seq);
  const uint8_t *frame = view_cached(s, rd, e->segment_id, e->offset, e->length);
  if (frame) prefetch_lines(frame, e->length);
}

void bp__evread_free(bp__evread *rd) {
  bp__buf_free(&rd->frame);
  bp__buf_free(&rd->scratch);
}

/* src with its entity (el bytes), scope (sl bytes) and payload copied into
 * one allocation; the strings need not end in a NUL. */
static bp_status event_copy(const bp_event *src, size_t el, size_t sl, bp_event **out) {
  bp_event *ev = malloc(sizeof(bp_event) + el + 1 + sl + 1 + src->payload_len);
  if (!ev) return bp__fail(BP_ENOMEM, "out of memory for an event");
  char *p = (char *)(ev + 1);
  *ev = *src;
  memcpy(p, src->entity, el);
  p[el] = '\0';
  ev->entity = p;
  p += el + 1;
  memcpy(p, src->scope, sl);
  p[sl] = '\0';
  ev->scope = p;
  p += sl + 1;
  if (src->payload_len) memcpy(p, src->payload, src->payload_len);
  ev->payload = (const uint8_t *)p;
  *out = ev;
  return BP_OK;
}

/* A decoded frame as one allocation. */
static bp_status event_from_frame(const bp__frame *f, bp_event **out) {
  bp_event ev = {.header = f->header,
                 .entity = f->entity,
                 .scope = f->scope,
                 .has_hash_chain = f->has_chain,
                 .hash_chain = f->chain,
                 .payload = f->payload,
                 .payload_len = f->payload_len};
  return event_copy(&ev, f->entity_len, f->scope_len, out);
}

/* Reads event seq into one allocation (view lock held); rd is scratch. */
static bp_status event_at(bp_store *s, uint64_t seq, bp__evread *rd, bp_event **out) {
  bp_status st = bp__read_event(s, seq, rd);
  return st ? st : event_copy(&rd->ev, strlen(rd->ev.entity), strlen(rd->ev.scope), out);
}

/* The first lines of a frame, asked for before its length is read. */
#define BP__GET_AHEAD_BYTES 512

/* bp_get by the id table's hint alone (view lock held). A frame holds all of
 * its event, its id included, so when the hinted frame's segment is mapped
 * and the frame there checks out and carries the id asked for, the index
 * entry is never read: one cache miss and, on a VM, one nested page walk
 * fewer on the way. Returns false when it cannot tell (no hint, no mapping,
 * a frame that does not check out or holds another id): the caller reads by
 * the entry then, which also reports what is wrong. *st is set on true. */
static bool get_by_hint(bp_store *s, bp_id id, bp__evread *rd, bp_event **out, bp_status *st) {
  uint64_t seg, off;
  size_t map_len;
  if (!bp__index_frame_hint(&s->ix, id, bp__index_visible(&s->ix), &seg, &off)) return false;
  const uint8_t *map = bp__segment_map(s, seg, &map_len);
  if (!map || off >= map_len || map_len - off < BP__FRAME_PREFIX) return false;
  const uint8_t *frame = map + off;
  size_t room = map_len - off;
  prefetch_lines(frame, room < BP__GET_AHEAD_BYTES ? room : BP__GET_AHEAD_BYTES);
  size_t body = bp__get_be32(frame);
  if (body > room - BP__FRAME_PREFIX) return false;
  if (body + BP__FRAME_PREFIX > BP__GET_AHEAD_BYTES) prefetch_lines(frame, body + BP__FRAME_PREFIX);
  if (bp__crc32(frame + BP__FRAME_PREFIX, body) != bp__get_be32(frame + 4)) return false;
  bp__frame f;
  if (!bp__frame_decode_canonical(frame + BP__FRAME_PREFIX, body, &rd->scratch, &f)) return false;
  if (!bp_id_eq(f.header.event_id, id)) return false;
  *st = event_from_frame(&f, out);
  return true;
}

/* Payloads up to this size are decoded into the stack by bp_get. */
#define BP__GET_SCRATCH_BYTES 256

/* bp_get with the view lock held. */
static bp_status get_locked(bp_store *s, bp_id id, bp_event **out) {
  bp__evread rd;
  bp__evread_init(&rd);
  uint8_t scratch[BP__GET_SCRATCH_BYTES];
  bp__buf_init_on(&rd.scratch, scratch, sizeof scratch);
  bp_status st;
  if (!get_by_hint(s, id, &rd, out, &st)) {
    uint64_t seq;
    st = bp__index_find_id(&s->ix, id, bp__index_visible(&s->ix), &seq) ? event_at(s, seq, &rd, out) : not_found(id);
  }
  bp__evread_free(&rd);
  return st;
}

bp_status bp_get(bp_store *s, bp_id id, bp_event **out) {
  if (out) *out = NULL;
  if (!s || !out) return bp__fail(BP_EINVAL, "bp_get: NULL argument");
  bp__view_enter(s);
  bp_status st = get_locked(s, id, out);
  bp__view_leave(s);
  return st;
}

bp_status bp_get_frame(bp_store *s, bp_id id, void **frame, size_t *len) {
  if (frame) *frame = NULL;
  if (len) *len = 0;
  if (!s || !frame || !len) return bp__fail(BP_EINVAL, "bp_get_frame: NULL argument");
  bp__evread rd;
  bp__evread_init(&rd);
  uint64_t seq;
  bp_status st;
  bp__view_enter(s);
  if (!bp__index_find_id(&s->ix, id, bp__index_visible(&s->ix), &seq)) {
    st = not_found(id);
  } else if (!(st = bp__read_frame(s, seq, &rd))) {
    size_t n = bp__index_at(&s->ix, seq)->length;
    *frame = malloc(n);
    if (*frame) {
      memcpy(*frame, rd.raw, n);
      *len = n;
    } else {
      st = bp__fail(BP_ENOMEM, "out of memory for a %zu-byte frame", n);
    }
  }
  bp__view_leave(s);
  bp__evread_free(&rd);
  return st;
}

bp_status bp_frame_decode(const void *frame, size_t len, bp_event **out) {
  if (out) *out = NULL;
  if (!frame || !out) return bp__fail(BP_EINVAL, "bp_frame_decode: NULL argument");
  uint8_t scratch_mem[BP__GET_SCRATCH_BYTES];
  bp__buf scratch;
  bp__buf_init_on(&scratch, scratch_mem, sizeof scratch_mem);
  bp__frame f;
  bp_status st = bp__frame_check_whole(frame, len, &scratch, &f);
  if (!st) st = event_from_frame(&f, out);
  bp__buf_free(&scratch);
  return st;
}

void bp_event_free(bp_event *ev) { free(ev); }

char *bp_event_payload_json(const bp_event *ev) {
  if (!ev) return NULL;
  char *json = NULL;
  if (bp_msgpack_to_json(ev->payload, ev->payload_len, &json) != BP_OK) return NULL;
  return json;
}

/* ------------------------------------------------- recycled result arrays */

/* Memory a process has not touched before costs a page fault, a zeroed page
 * and, in a virtual machine, often a fault in the host as well: several
 * microseconds per 4 KiB page, more than copying the entries into it. So the
 * last freed result array of BP__STREAM_RESULT_BYTES or more (and at most
 * BP__SPARE_MAX) is kept while any store is open, and the next large query
 * writes into it. The last bp_close releases it. Where the allocator cannot
 * tell a block's size, nothing is kept. */
#define BP__STREAM_RESULT_BYTES (1u << 20)
#define BP__SPARE_MAX ((size_t)1 << 30)

static pthread_mutex_t spare_lock = PTHREAD_MUTEX_INITIALIZER;
static void *spare;          /* the kept array, or NULL */
static size_t stores_open;   /* open stores in the process */

static size_t block_bytes(void *p) {
#if defined(__GLIBC__)
  return p ? malloc_usable_size(p) : 0;
#else
  (void)p;
  return 0;
#endif
}

void bp__results_store_opened(void) {
  pthread_mutex_lock(&spare_lock);
  stores_open++;
  pthread_mutex_unlock(&spare_lock);
}

void bp__results_store_closed(void) {
  void *drop = NULL;
  pthread_mutex_lock(&spare_lock);
  if (--stores_open == 0) {
    drop = spare;
    spare = NULL;
  }
  pthread_mutex_unlock(&spare_lock);
  free(drop);
}

/* Frees a result array, or keeps it as the spare (freeing the one before). */
static void release_array(void *p) {
  size_t bytes = block_bytes(p);
  if (bytes >= BP__STREAM_RESULT_BYTES && bytes <= BP__SPARE_MAX) {
    pthread_mutex_lock(&spare_lock);
    if (stores_open > 0) {
      void *old = spare;
      spare = p;
      p = old;
    }
    pthread_mutex_unlock(&spare_lock);
  }
  free(p);
}

/* The spare if it holds at least bytes, else NULL (the spare stays). */
static void *take_spare(size_t bytes) {
  void *p = NULL;
  pthread_mutex_lock(&spare_lock);
  if (spare && block_bytes(spare) >= bytes) {
    p = spare;
    spare = NULL;
  }
  pthread_mutex_unlock(&spare_lock);
  return p;
}

void bp_entries_free(bp_entries *entries) {
  if (!entries) return;
  release_array(entries->items);
  entries->items = NULL;
  entries->len = 0;
}

void bp_events_free(bp_events *events) {
  if (!events) return;
  for (size_t i = 0; i < events->len; i++) bp_event_free(events->items[i]);
  free(events->items);
  events->items = NULL;
  events->len = 0;
}

bool bp_entry_is_correlated(const bp_entry *a, const bp_entry *b) {
  return bp_id_eq(a->correlation_id, b->correlation_id);
}

bool bp_entry_is_caused_by(const bp_entry *e, const bp_entry *cause) {
  return !bp_id_is_nil(e->causation_id) && bp_id_eq(e->causation_id, cause->event_id);
}

bool bp_entry_is_root_cause(const bp_entry *e) { return bp_id_is_nil(e->causation_id); }

/* ----------------------------------------------------------------- queries */

typedef bool (*visit_fn)(const bp_entry *entry, void *ctx);

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return (x > y) - (x < y);
}

/* A region resolved against the index once per query: the scope as a name
 * id, and which names have the entity prefix, so that testing an entry
 * compares integers, not strings. */
typedef struct qplan {
  const bp_region *r;
  bool any_scope;
  uint32_t scope_id;
  uint8_t *prefix_ok;       /* by name id; NULL: any entity */
} qplan;

static bp_status plan_region(const bp_store *s, const bp_region *r, qplan *p) {
  memset(p, 0, sizeof *p);
  p->r = r;
  p->any_scope = true;
  if (!r) return BP_OK;
  /* Names referenced by visible entries were interned before they became
   * visible: the caller loads `visible` before planning. */
  uint32_t names = bp__index_name_count(&s->ix);
  if (r->scope) {
    const bp__name *nm = bp__index_find_name(&s->ix, r->scope, strlen(r->scope));
    p->any_scope = false;
    p->scope_id = nm ? nm->id : UINT32_MAX;
  }
  if (r->entity_prefix) {
    p->prefix_ok = calloc(names ? names : 1, 1);
    if (!p->prefix_ok) return bp__fail(BP_ENOMEM, "query: out of memory");
    size_t plen = strlen(r->entity_prefix);
    for (uint32_t i = 0; i < names; i++) {
      const bp__name *nm = bp__index_name(&s->ix, i);
      p->prefix_ok[i] = nm->len >= plen && memcmp(nm->str, r->entity_prefix, plen) == 0;
    }
  }
  return BP_OK;
}

static bp__scan_pred scan_pred(const qplan *p) {
  bp__scan_pred q = bp__scan_pred_of(p->r);
  q.prefix_ok = p->prefix_ok;
  q.any_scope = p->any_scope;
  q.scope_id = p->scope_id;
  return q;
}

/* Where matching entries go: to a callback (bp_query_each), or written
 * straight into the caller's array (bp_query and friends). */
typedef struct qsink {
  visit_fn visit;
  void *ctx;
  bp_entries *out;          /* collecting: the array, else NULL */
  size_t cap;
  bool streaming;           /* BP__STREAM_RESULT_BYTES or more: written with
                             * non-temporal stores, which would only push the
                             * index out of the cache (the caller reads later) */
  bool oom;
  bool stop;
} qsink;

/* Makes room for n results in a collection; false when memory runs out. A
 * list of candidates reserves for all of them (deliver_list); an unfiltered
 * scan reserves for every visible event up front (a hint: failing there only
 * means growing later). */
static bool reserve(qsink *k, uint64_t n) {
  if (!k->out || n <= k->cap || n == 0) return true;
  size_t bytes = (size_t)n * sizeof(bp_entry);
  bp_entry *items = bytes >= BP__STREAM_RESULT_BYTES ? take_spare(bytes) : NULL;
  if (items) {
    if (k->out->len) memcpy(items, k->out->items, k->out->len * sizeof *items);
    free(k->out->items);
  } else {
    items = realloc(k->out->items, bytes);
  }
  if (!items) return false;
  k->out->items = items;
  k->cap = (size_t)n;
  k->streaming = (uint64_t)n * sizeof *items >= BP__STREAM_RESULT_BYTES;
  /* A fresh large array is a new mapping whose pages would each fault on
   * first write; reused memory is left alone. */
  if (k->streaming) bp__os_prefault_write(items, (size_t)n * sizeof *items);
  return true;
}

static void store_entry(bp_entry *dst, const bp_entry *src, bool streaming) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (streaming) {
    /* 16-byte streaming stores need 16-byte alignment; an entry is a whole
     * number of 8-byte words, so at most one word at either end is written
     * on its own. */
    _Static_assert(sizeof(bp_entry) % 8 == 0, "bp_entry is a whole number of words");
    const char *from = (const char *)src;
    char *to = (char *)dst;
    size_t at = 0;
    if ((uintptr_t)to & 8) {
      long long w;
      memcpy(&w, from, 8);
      _mm_stream_si64((long long *)(void *)to, w);
      at = 8;
    }
    for (; at + 16 <= sizeof(bp_entry); at += 16)
      _mm_stream_si128((__m128i *)(void *)(to + at), _mm_loadu_si128((const __m128i *)(const void *)(from + at)));
    if (at < sizeof(bp_entry)) {
      long long w;
      memcpy(&w, from + at, 8);
      _mm_stream_si64((long long *)(void *)(to + at), w);
    }
    return;
  }
#endif
  (void)streaming;
  *dst = *src;
}

/* Hands one entry to a bp_query_each callback. */
static void visit_entry(const bp_store *s, uint64_t seq, qsink *k) {
  bp_entry e;
  bp__entry_from_index(s, seq, &e);
  if (!k->visit(&e, k->ctx)) k->stop = true;
}

/* The entry of seq passes the region's remaining filters. */
static bool entry_matches(const bp_store *s, const qplan *p, uint64_t seq) {
  const bp_region *r = p->r;
  if (!r) return true;
  const bp__ientry *e = bp__index_at(&s->ix, seq);
  if (r->has_clock_range && (e->clock < r->clock_min || e->clock > r->clock_max)) return false;
  if (r->fact == BP_FACT_EXACT && e->kind != r->kind) return false;
  if (r->fact == BP_FACT_CATEGORY && bp_kind_category(e->kind) != r->category) return false;
  if (p->prefix_ok && !p->prefix_ok[e->entity]) return false;
  if (!p->any_scope && e->scope != p->scope_id) return false;
  return true;
}

/* Copies the matching entries among seqs[0, n) to `to`, each built from the
 * index and stored where it goes, with no call or growth check per entry.
 * Returns how many it copied. */
static size_t copy_entries(const bp_store *s, const qplan *p, bp__name *const *names, const uint32_t *seqs,
                           uint64_t n, bp_entry *to, bool streaming) {
  bp_entry *at = to;
  for (uint64_t i = 0; i < n; i++) {
    if (i + 2 * BP__READ_AHEAD < n) bp__prefetch_entry(s, seqs[i + 2 * BP__READ_AHEAD]);
    uint32_t seq = seqs[i];
    if (!entry_matches(s, p, seq)) continue;
    bp_entry t;
    fill_entry(bp__index_at(&s->ix, seq), names, seq, &t);
    store_entry(at++, &t, streaming);
  }
  return (size_t)(at - to);
}

/*
 * A large collection is copied in chunks of COPY_CHUNK candidates, by the
 * caller and the store's helper threads at once (pool.h): copying is bound by
 * how many memory loads one CPU keeps in flight, so a second CPU nearly
 * doubles it. A chunk's matches go where the chunk would begin if every
 * candidate matched; chunks that lost some to the region's filters are moved
 * down afterwards, in order.
 */
#define COPY_CHUNK 1024
#define COPY_SHARED_MIN (8 * COPY_CHUNK)

typedef struct copy_job {
  const bp_store *s;
  const qplan *p;
  bp__name *const *names;
  const uint32_t *seqs;
  uint64_t n;
  bp_entry *to;
  bool streaming;
  uint32_t *kept;           /* matches per chunk */
} copy_job;

static void copy_chunk(void *ctx, uint64_t c) {
  const copy_job *j = ctx;
  uint64_t from = c * COPY_CHUNK, n = j->n - from < COPY_CHUNK ? j->n - from : COPY_CHUNK;
  j->kept[c] = (uint32_t)copy_entries(j->s, j->p, j->names, j->seqs + from, n, j->to + from, j->streaming);
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (j->streaming) _mm_sfence(); /* a helper's streamed entries, before it reports the chunk done */
#endif
}

/* Copies the matching entries among n sequences into the collection, which
 * has room for all n. */
static void collect_list(const bp_store *s, const qplan *p, const uint32_t *seqs, uint64_t n, qsink *k) {
  bp__name *const *names = atomic_load_explicit(&s->ix.names, memory_order_acquire);
  bp_entry *to = k->out->items + k->out->len;
  uint64_t chunks = (n + COPY_CHUNK - 1) / COPY_CHUNK;
  uint32_t *kept = n >= COPY_SHARED_MIN && bp__pool_shares(s->helpers) ? malloc(chunks * sizeof *kept) : NULL;
  if (!kept) {
    k->out->len += copy_entries(s, p, names, seqs, n, to, k->streaming);
    return;
  }
  copy_job j = {s, p, names, seqs, n, to, k->streaming, kept};
  bp__pool_run(s->helpers, copy_chunk, &j, chunks);
  size_t len = 0;
  for (uint64_t c = 0; c < chunks; c++) {
    if (len != c * COPY_CHUNK && kept[c]) memmove(to + len, to + c * COPY_CHUNK, kept[c] * sizeof *to);
    len += kept[c];
  }
  free(kept);
  k->out->len += len;
}

/* Delivers the matching entries among a list of sequences, loading entries
 * a little ahead: a stream's entries are scattered through the index. A
 * collection first makes room for all of them (at least doubling). */
static void deliver_list(const bp_store *s, const qplan *p, const uint32_t *seqs, uint64_t n, qsink *k) {
  if (n == 0) return;
  if (k->out) {
    uint64_t need = (uint64_t)k->out->len + n, twice = (uint64_t)k->cap * 2;
    if (k->cap < need && !reserve(k, need > twice ? need : twice)) {
      k->oom = k->stop = true;
      return;
    }
    collect_list(s, p, seqs, n, k);
    return;
  }
  for (uint64_t i = 0; i < n && !k->stop; i++) {
    if (i + 2 * BP__READ_AHEAD < n) bp__prefetch_entry(s, seqs[i + 2 * BP__READ_AHEAD]);
    if (entry_matches(s, p, seqs[i])) visit_entry(s, seqs[i], k);
  }
}

/* A collection from the scan index: every match's sequence is gathered first
 * (4 bytes each, against 184 for its entry), so that room for the entries is
 * made once, at their exact number, and they are copied in one pass (shared
 * with the helpers when large), instead of growing the result batch by batch
 * (a copy of everything so far and fresh pages at each doubling). False when
 * memory for the sequences runs out (nothing was delivered). */
static bool deliver_scanned(const bp_store *s, const bp__scan_pred *q, uint64_t limit, qsink *k) {
  /* Never more matches than events scanned: with room for limit, the room
   * left is never less than the events left. */
  size_t cap = limit < 16384 ? (size_t)limit : 16384, n = 0;
  uint32_t *seqs = malloc(cap * sizeof *seqs);
  if (!seqs) return false;
  for (uint64_t seq = 0; seq < limit;) {
    if (cap - n < 1024 && cap < limit) {
      size_t more = (uint64_t)cap * 2 < limit ? cap * 2 : (size_t)limit;
      uint32_t *grown = realloc(seqs, more * sizeof *seqs);
      if (!grown) {
        free(seqs);
        return false;
      }
      seqs = grown;
      cap = more;
    }
    n += bp__scan_filter(&s->scan, seq, limit, q, seqs + n, cap - n < 1024 ? cap - n : 1024, &seq);
  }
  const qplan matched = {NULL, true, 0, NULL}; /* the scan filter applied the region */
  deliver_list(s, &matched, seqs, n, k);
  free(seqs);
  return true;
}

/* Runs the region over the index, reading the smallest index stream that can
 * serve it. exact_entity limits the result to one entity (bp_stream). */
static bp_status run_planned(bp_store *s, const bp_region *r, const char *exact_entity, qsink *k, uint64_t limit,
                             const qplan *p) {
  /* Two streams: the best so far and the one being weighed. */
  bp__stream streams[2];
  bp__stream *best = &streams[0], *cand = &streams[1];
  bool have_source = false;

  if (exact_entity) {
    const bp__name *nm = bp__index_find_name(&s->ix, exact_entity, strlen(exact_entity));
    if (!nm) return BP_OK;
    bp__index_stream(&s->ix, BP__STREAM_ENTITY, nm->id, limit, best);
    have_source = true;
  }
  if (r && r->scope) {
    const bp__name *nm = bp__index_find_name(&s->ix, r->scope, strlen(r->scope));
    if (!nm) return BP_OK;
    bp__index_stream(&s->ix, BP__STREAM_SCOPE, nm->id, limit, cand);
    if (!have_source || cand->total < best->total) { bp__stream *t = best; best = cand; cand = t; }
    have_source = true;
  }
  if (r && (r->fact == BP_FACT_EXACT || r->fact == BP_FACT_CATEGORY)) {
    if (r->fact == BP_FACT_CATEGORY && r->category > 15) return BP_OK;
    if (r->fact == BP_FACT_EXACT) bp__index_stream(&s->ix, BP__STREAM_KIND, r->kind, limit, cand);
    else bp__index_stream(&s->ix, BP__STREAM_CATEGORY, r->category, limit, cand);
    if (cand->total == 0) return BP_OK;
    if (!have_source || cand->total < best->total) { bp__stream *t = best; best = cand; cand = t; }
    have_source = true;
  }

  if (!exact_entity && r && r->entity_prefix) {
    /* Gather the streams of every entity with the prefix, if together they are smaller. */
    size_t plen = strlen(r->entity_prefix);
    uint32_t names = bp__index_name_count(&s->ix);
    uint64_t total = 0;
    for (uint32_t i = 1; i < names; i++) {
      const bp__name *nm = bp__index_name(&s->ix, i);
      if (nm->len >= plen && memcmp(nm->str, r->entity_prefix, plen) == 0) {
        bp__index_stream(&s->ix, BP__STREAM_ENTITY, i, limit, cand);
        total += cand->total;
      }
    }
    if (!have_source || total < best->total) {
      uint32_t *seqs = malloc(sizeof *seqs * (total ? total : 1));
      if (!seqs) return bp__fail(BP_ENOMEM, "query: out of memory");
      uint64_t got = 0;
      for (uint32_t i = 1; i < names && got < total; i++) {
        const bp__name *nm = bp__index_name(&s->ix, i);
        if (nm->len >= plen && memcmp(nm->str, r->entity_prefix, plen) == 0) {
          bp__index_stream(&s->ix, BP__STREAM_ENTITY, i, limit, cand);
          uint64_t n = cand->total < total - got ? cand->total : total - got;
          bp__stream_copy(cand, 0, n, seqs + got);
          got += n;
        }
      }
      qsort(seqs, got, sizeof *seqs, cmp_u32);
      deliver_list(s, p, seqs, got, k);
      free(seqs);
      return BP_OK;
    }
  }

  if (have_source) {
    if (k->out && best->n > 1) {
      /* Collected results are copied in large slices, shared with the
       * helper threads: the stream's pieces (a run's or a gen's each) are
       * put end to end first. */
      uint32_t *seqs = malloc(sizeof *seqs * (best->total ? best->total : 1));
      if (!seqs) return bp__fail(BP_ENOMEM, "query: out of memory");
      bp__stream_copy(best, 0, best->total, seqs);
      deliver_list(s, p, seqs, best->total, k);
      free(seqs);
      return BP_OK;
    }
    for (uint32_t i = 0; i < best->n && !k->stop; i++) deliver_list(s, p, best->p[i].v, best->p[i].n, k);
  } else {
    /* No stream narrows it down: filter the scan index, then read entries. */
    if (!r || (!r->entity_prefix && !r->scope && r->fact == BP_FACT_ANY && !r->has_clock_range)) (void)reserve(k, limit);
    bp__scan_pred q = scan_pred(p);
    const qplan matched = {NULL, true, 0, NULL}; /* the scan filter applied the region */
    if (k->out && limit > COPY_CHUNK && deliver_scanned(s, &q, limit, k)) return BP_OK;
    uint32_t batch[1024];
    for (uint64_t seq = 0; seq < limit && !k->stop;) {
      size_t got = bp__scan_filter(&s->scan, seq, limit, &q, batch, 1024, &seq);
      deliver_list(s, &matched, batch, got, k);
    }
  }
  return BP_OK;
}

static bp_status run_query(bp_store *s, const bp_region *r, const char *exact_entity, qsink *k) {
  bp__view_enter(s);
  uint64_t limit = bp__index_visible(&s->ix);
  qplan plan;
  bp_status st = plan_region(s, r, &plan);
  if (!st) st = run_planned(s, r, exact_entity, k, limit, &plan);
  bp__view_leave(s);
  free(plan.prefix_ok);
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (k->streaming) _mm_sfence(); /* order the streamed entries before the caller's reads */
#endif
  return st;
}

static bp_status collect_query(bp_store *s, const bp_region *r, const char *exact, bp_entries *out) {
  if (!s || !out) return bp__fail(BP_EINVAL, "query: NULL argument");
  out->items = NULL;
  out->len = 0;
  qsink k = {NULL, NULL, out, 0, false, false, false};
  bp_status st = run_query(s, r, exact, &k);
  if (!st && k.oom) st = bp__fail(BP_ENOMEM, "query: out of memory for results");
  if (st) {
    bp_entries_free(out);
  } else if (out->len < k.cap / 2) {
    /* Room was made for every candidate; give back what filters left unused. */
    if (out->len == 0) {
      bp_entries_free(out);
    } else {
      bp_entry *fit = realloc(out->items, out->len * sizeof *fit);
      if (fit) out->items = fit;
    }
  }
  return st;
}

bp_status bp_query(bp_store *s, const bp_region *region, bp_entries *out) {
  if (!region) return bp__fail(BP_EINVAL, "bp_query: region is NULL");
  return collect_query(s, region, NULL, out);
}

bp_status bp_query_each(bp_store *s, const bp_region *region, bool (*visit)(const bp_entry *, void *),
                        void *ctx) {
  if (!s || !region || !visit) return bp__fail(BP_EINVAL, "bp_query_each: NULL argument");
  qsink k = {visit, ctx, NULL, 0, false, false, false};
  return run_query(s, region, NULL, &k);
}

bp_status bp_stream(bp_store *s, const char *entity, bp_entries *out) {
  if (!entity) return bp__fail(BP_EINVAL, "bp_stream: entity is NULL");
  return collect_query(s, NULL, entity, out);
}

bp_status bp_stream_each(bp_store *s, const char *entity, bool (*visit)(const bp_entry *, void *), void *ctx) {
  if (!s || !entity || !visit) return bp__fail(BP_EINVAL, "bp_stream_each: NULL argument");
  qsink k = {visit, ctx, NULL, 0, false, false, false};
  return run_query(s, NULL, entity, &k);
}

bp_status bp_by_scope(bp_store *s, const char *scope, bp_entries *out) {
  if (!scope) return bp__fail(BP_EINVAL, "bp_by_scope: scope is NULL");
  bp_region r = bp_region_scope(scope);
  return collect_query(s, &r, NULL, out);
}

bp_status bp_by_fact(bp_store *s, bp_kind kind, bp_entries *out) {
  bp_region r = bp_region_with_kind(bp_region_all(), kind);
  return collect_query(s, &r, NULL, out);
}

/* --------------------------------------------------------------- ancestors */

static bp_status walk_locked(bp_store *s, bp_id id, size_t limit, bp_events *out) {
  uint64_t visible = bp__index_visible(&s->ix), seq;
  if (!bp__index_find_id(&s->ix, id, visible, &seq)) return not_found(id);
  if (limit == 0) return BP_OK;
  const bp__ientry *start = bp__index_at(&s->ix, seq);
  const bp__name *ent = bp__index_name(&s->ix, start->entity);
  bp__stream stream;
  bp__index_stream(&s->ix, BP__STREAM_ENTITY, ent->id, visible, &stream);
  /* The event's place in its entity's stream (sorted by global sequence),
   * and the stream up to it in one array, walked backwards. */
  uint64_t lo = bp__stream_lower_bound(&stream, seq);
  /* Only the items walked, and the one before them (for the last link). */
  size_t walked = (size_t)lo + 1 < limit ? (size_t)lo + 1 : limit;
  uint64_t base = lo + 1 - walked > 0 ? lo - walked : 0;
  uint32_t *window = malloc(sizeof *window * (lo + 1 - base));
  if (!window) return bp__fail(BP_ENOMEM, "out of memory for the ancestors of an event");
  bp__stream_copy(&stream, base, lo + 1 - base, window);
  const uint64_t top = lo - base; /* window[top] is the event itself */
  size_t count = walked;
  bp_event **items = calloc(count, sizeof *items);
  if (!items) {
    free(window);
    return bp__fail(BP_ENOMEM, "out of memory for %zu ancestors", count);
  }
  bp_status st = BP_OK;
  size_t got = 0;
  bp__evread rd;
  bp__evread_init(&rd);
  for (size_t k = 0; k < count && !st; k++) {
    if (k + 2 * BP__READ_AHEAD < count) bp__prefetch_entry(s, window[top - k - 2 * BP__READ_AHEAD]);
    if (k + BP__READ_AHEAD < count) bp__prefetch_frame(s, window[top - k - BP__READ_AHEAD], &rd);
    uint64_t at = window[top - k];
    const bp__ientry *e = bp__index_at(&s->ix, at);
    if ((st = event_at(s, at, &rd, &items[got]))) break;
    got++;
    /* Each link: this event's prev_hash is the event_hash of the one before it. */
    const uint8_t *prev = items[got - 1]->hash_chain.prev_hash;
    static const uint8_t zero[32];
    const uint8_t *want = lo - k > 0 ? bp__index_at(&s->ix, window[top - k - 1])->event_hash : zero;
    if (memcmp(prev, want, 32) != 0) {
      char hex[33];
      bp_id_to_hex(e->event_id, hex);
      st = bp__fail(BP_ECORRUPT, "hash chain of %s broken at event %s (clock %u): prev_hash does not match %s",
                    ent->str, hex, e->clock, lo - k > 0 ? "its predecessor's event_hash" : "genesis (zero)");
    }
  }
  bp__evread_free(&rd);
  free(window);
  out->items = items;
  out->len = got;
  if (st) bp_events_free(out);
  return st;
}

bp_status bp_walk_ancestors(bp_store *s, bp_id id, size_t limit, bp_events *out) {
  if (!s || !out) return bp__fail(BP_EINVAL, "bp_walk_ancestors: NULL argument");
  out->items = NULL;
  out->len = 0;
  bp__view_enter(s);
  bp_status st = walk_locked(s, id, limit, out);
  bp__view_leave(s);
  return st;
}
