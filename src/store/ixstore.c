/*
 * ixstore.c - the persistent index's life in a store (docs/INDEX.md):
 * loading it at open and checking it against the log, attaching fresh files
 * when it is built, turning frozen gens into runs and merging runs on the
 * index thread, and making it durable at close.
 */
#include "store_impl.h"

#include <dirent.h>
#include <errno.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <inttypes.h>
#include <stdio.h>
#include <unistd.h>

#define ENTRIES_MAGIC "BPXENTR1"
#define MERGE_FANOUT 8u

static size_t entries_chunk_bytes(void) { return sizeof(bp__ientry) * BP__CHUNK_SIZE; }

static const bp__ientry *entry_of(void *ctx, uint64_t seq) { return bp__index_at(&((bp_store *)ctx)->ix, seq); }

static void file_in(const bp_store *s, const char *name, char *buf, size_t size) {
  snprintf(buf, size, "%s/%s", s->ixdir, name);
}

/* ------------------------------------------------------------ the state */

/* The segments holding events [0, count), from the entries (which are in
 * segment order): one binary search per segment. */
static bp_status segments_of(bp_store *s, uint64_t count, bp__ixstate *st) {
  /* The segments a state already listed keep their ranges but for the last
   * (appends may have gone on in it): only what follows is looked up in the
   * entries. Finding every segment's end anew touched, and so checked, a
   * chunk of entries per probe: hundreds of megabytes at each close of a
   * store of tens of millions of events. */
  const bp__ixseg *known = s->ix_wsegs ? s->ix_wsegs : s->ix_segs;
  uint32_t nknown = s->ix_wsegs ? s->ix_nwsegs : s->ix_nsegs;
  size_t cap = 16 + (size_t)nknown;
  st->nsegs = 0;
  st->segs = malloc(sizeof *st->segs * cap);
  if (!st->segs) return bp__fail(BP_ENOMEM, "out of memory listing the index's segments");
  uint64_t seq = 0;
  for (uint32_t i = 0; i + 1 < nknown && known[i].first == seq && known[i].first + known[i].count < count; i++) {
    st->segs[st->nsegs++] = known[i];
    seq = known[i].first + known[i].count;
  }
  while (seq < count) {
    uint32_t id = bp__index_at(&s->ix, seq)->segment_id;
    uint64_t lo = seq + 1, hi = count;
    while (lo < hi) {
      uint64_t mid = lo + (hi - lo) / 2;
      if (bp__index_at(&s->ix, mid)->segment_id <= id) lo = mid + 1;
      else hi = mid;
    }
    if (st->nsegs == cap) {
      bp__ixseg *g = realloc(st->segs, sizeof *g * cap * 2);
      if (!g) return bp__fail(BP_ENOMEM, "out of memory listing the index's segments");
      st->segs = g;
      cap *= 2;
    }
    const bp__ientry *last = bp__index_at(&s->ix, lo - 1);
    st->segs[st->nsegs++] = (bp__ixseg){id, seq, lo - seq, last->offset + last->length};
    seq = lo;
  }
  return BP_OK;
}

static const char *name_at(void *ctx, uint32_t i, uint32_t *len) {
  bp_store *s = ctx;
  const bp__name *nm = bp__index_name(&s->ix, s->ix_names_written + i);
  *len = nm->len;
  return nm->str;
}

/* The CRCs of the last chunk's entries and scan fields below count, when it
 * is filled in part (0 otherwise). */
static void tail_crcs(bp_store *s, uint64_t count, uint32_t *entries, uint32_t *scan) {
  uint32_t full = (uint32_t)(count >> BP__CHUNK_SHIFT), part = (uint32_t)(count & (BP__CHUNK_SIZE - 1));
  *entries = *scan = 0;
  if (!part) return;
  *entries = bp__crc32(bp__index_at(&s->ix, (uint64_t)full << BP__CHUNK_SHIFT), (size_t)part * sizeof(bp__ientry));
  const uint8_t *c = atomic_load_explicit(&s->scan.chunks[full], memory_order_acquire);
  if (c) *scan = bp__scan_chunk_crc(&s->scan, c, part);
}

/* Writes the CRCs of chunks [ix_sums_written, full) to index/sums: chunks
 * this process filled (those read back at open have theirs already). */
static bp_status write_sums(bp_store *s, uint32_t full) {
  if (full <= s->ix_sums_written) return BP_OK;
  uint32_t n = full - s->ix_sums_written;
  uint32_t *e = malloc(sizeof *e * n), *c = malloc(sizeof *c * n);
  bp_status rs = BP_OK;
  if (!e || !c) {
    rs = bp__fail(BP_ENOMEM, "out of memory for the index's chunk CRCs");
  } else {
    for (uint32_t i = 0; i < n; i++) {
      uint32_t ci = s->ix_sums_written + i;
      e[i] = bp__crc32(bp__index_at(&s->ix, (uint64_t)ci << BP__CHUNK_SHIFT), entries_chunk_bytes());
      const uint8_t *sc = atomic_load_explicit(&s->scan.chunks[ci], memory_order_acquire);
      c[i] = sc ? bp__scan_chunk_crc(&s->scan, sc, BP__CHUNK_SIZE) : 0;
    }
    rs = bp__ixsums_write(s->ixdir, s->ix_sums_written, n, e, c, &s->ix_sums_crc);
    if (!rs) s->ix_sums_written = full;
  }
  free(e);
  free(c);
  return rs;
}

/* Makes events [0, count) of the index durable and says so in index/state:
 * names, entries and scan fields first, then the state that names them. */
static bp_status write_state_with(bp_store *s, uint64_t count, const bp__ixrun_ref *refs, uint32_t nrefs);

static bp_status write_state(bp_store *s, uint64_t count) { return write_state_with(s, count, NULL, 0); }

/* write_state naming runs refs (NULL: the index's own runs). */
static bp_status write_state_with(bp_store *s, uint64_t count, const bp__ixrun_ref *refs, uint32_t nrefs) {
  uint32_t names = bp__index_name_count(&s->ix);
  if (s->ix_names_written == 0) s->ix_names_written = 1; /* "" is implied */
  bp_status rs = BP_OK;
  if (names > s->ix_names_written || s->ix_names_bytes == 0) {
    if ((rs = bp__ixnames_append(s->ixdir, &s->ix_names_bytes, &s->ix_names_crc, names - s->ix_names_written,
                                 name_at, s)))
      return rs;
    s->ix_names_written = names;
  }
  if ((rs = write_sums(s, (uint32_t)(count >> BP__CHUNK_SHIFT)))) return rs;
  int rc = bp__cfile_sync(&s->ix.efile);
  if (!rc) rc = bp__scan_sync(&s->scan);
  if (rc) return bp__fail_errno(BP_EIO, rc, "sync the index files of %s", s->dir);
  bp__ixstate st;
  memset(&st, 0, sizeof st);
  st.count = count;
  st.names = names;
  st.names_bytes = s->ix_names_bytes;
  st.epoch = atomic_load(&s->log_epoch);
  st.layout = (uint32_t)s->cfg.index_layout;
  st.names_crc = s->ix_names_crc;
  st.sums_crc = s->ix_sums_crc;
  tail_crcs(s, count, &st.tail_crc, &st.scan_tail_crc);
  if (count) st.last_id = bp__index_at(&s->ix, count - 1)->event_id;
  st.next_run_no = s->ix_next_run;
  if (refs) {
    memcpy(st.runs, refs, sizeof *refs * nrefs);
    st.nruns = nrefs;
  } else {
    const bp__runset *runs = bp__index_runs(&s->ix);
    for (uint32_t i = 0; i < runs->n && runs->runs[i].ref.end <= count; i++) st.runs[st.nruns++] = runs->runs[i].ref;
  }
  rs = segments_of(s, count, &st);
  if (!rs) rs = bp__ixstate_write(s->ixdir, &st, &s->ix_state_at);
  if (!rs) {
    s->ix_state_count = count;
    s->ix_state_runs_end = st.nruns ? st.runs[st.nruns - 1].end : 0;
    /* Kept for the next state (segments_of); the list read at open stays
     * as it is for the readers that repair chunks from it. */
    free(s->ix_wsegs);
    s->ix_wsegs = st.segs;
    s->ix_nwsegs = st.nsegs;
    st.segs = NULL;
  }
  bp__ixstate_free(&st);
  return rs;
}

/* ------------------------------------------------------------ open */

static bp_status intern_loaded(void *ctx, const char *str, size_t len) {
  bp_store *s = ctx;
  uint32_t before = bp__index_name_count(&s->ix);
  bp__name *nm;
  bp_status st = bp__index_intern(&s->ix, str, len, &nm);
  if (st) return st;
  if (bp__index_name_count(&s->ix) == before) return bp__fail(BP_ECORRUPT, "index/names: \"%s\" twice", nm->str);
  nm->head_known = false; /* its events are in the index: learnt on use */
  return BP_OK;
}

/* Removes what a crash or an older index left in index/: temporary files and
 * runs the state does not name. */
static void remove_strays(bp_store *s, const bp__ixstate *st) {
  DIR *d = opendir(s->ixdir);
  if (!d) return;
  for (struct dirent *e; (e = readdir(d));) {
    bool stray = bp__has_suffix(e->d_name, ".tmp");
    uint64_t no;
    char tail;
    if (sscanf(e->d_name, "run-%" SCNu64 "%c", &no, &tail) == 1) {
      stray = true;
      for (uint32_t i = 0; i < st->nruns; i++)
        if (st->runs[i].no == no) stray = false;
    }
    if (!stray) continue;
    char p[4400];
    file_in(s, e->d_name, p, sizeof p);
    bp__os_table.unlink(p);
  }
  closedir(d);
}

/* Clears what a crash left past the state's end (entries and scan fields of
 * events it does not list, names and CRCs it does not count), so that the
 * files hold exactly what the state says and bp_verify can require it.
 * Nothing is written where there is nothing to clear. */
static void tidy_past_end(bp_store *s, const bp__ixstate *st) {
  uint32_t full = (uint32_t)(st->count >> BP__CHUNK_SHIFT), part = (uint32_t)(st->count & (BP__CHUNK_SIZE - 1));
  (void)bp__ixfile_cut(s->ixdir, BP__IX_NAMES, st->names_bytes);
  (void)bp__ixfile_cut(s->ixdir, BP__IX_SUMS, full ? 16 + 8 * (uint64_t)full : 0);
  bp__cfile_clear_from(&s->ix.efile, st->count * sizeof(bp__ientry), true);
  uint8_t *c = atomic_load_explicit(&s->scan.chunks[full], memory_order_acquire);
  if (c) bp__scan_chunk_clear_from(&s->scan, c, part, true);
  bp__cfile_clear_from(&s->scan.file, (uint64_t)(full + 1) * bp__scan_chunk_bytes(&s->scan), true);
}

/* Why the index cannot be used as it is, or NULL; checks it against the
 * segments the store lists. Lost events are an error of their own (*lost). */
static const char *check_against_log(bp_store *s, const bp__ixstate *st, bool *lost) {
  *lost = false;
  if (st->epoch != atomic_load(&s->log_epoch)) return "it was made for another log (compacted since)";
  if (st->layout != (uint32_t)s->cfg.index_layout) return "it was made for another index layout";
  for (uint32_t i = 0; i < st->nsegs; i++) {
    const bp__ixseg *g = &st->segs[i];
    uint64_t size = 0;
    bool found = false;
    pthread_mutex_lock(&s->seg_lock);
    for (size_t k = 0; k < s->nsegs; k++)
      if (s->segs[k].id == g->id) {
        found = true;
        size = s->segs[k].size;
      }
    pthread_mutex_unlock(&s->seg_lock);
    if (!found || size < g->frames_end) {
      *lost = true;
      bp__fail(BP_ECORRUPT, "segment %06" PRIu64 " %s, yet the index (its state intact) lists %" PRIu64
               " events in it up to offset %" PRIu64 ": events were lost (open with salvage to keep the rest)",
               g->id, found ? "has lost its end" : "is missing", g->count, g->frames_end);
      return "events it lists are gone";
    }
  }
  return NULL;
}

/* Takes the entries [0, count) from index/entries: every chunk mapped for a
 * writer, a last chunk filled in part copied into memory for a reader. */
static bp_status attach_entries(bp_store *s, uint64_t count, bool writable, bool *fresh) {
  char p[4400];
  file_in(s, BP__IX_ENTRIES, p, sizeof p);
  bp_status st = bp__cfile_open(&s->ix.efile, p, ENTRIES_MAGIC, (uint32_t)sizeof(bp__ientry), entries_chunk_bytes(),
                                writable, fresh);
  if (st) return st;
  s->ix.efile_open = true;
  if (*fresh) count = 0;
  uint32_t full = (uint32_t)(count >> BP__CHUNK_SHIFT), part = (uint32_t)(count & (BP__CHUNK_SIZE - 1));
  if (count * sizeof(bp__ientry) > s->ix.efile.size)
    return bp__fail(BP_ECORRUPT, "%s is shorter than the index state says", p);
  /* Full chunks are checked when first touched (bp__index_chunk_slow). */
  s->ix.lazy_end = full;
  s->ix.heap_from = full;
  if (writable) {
    /* The chunk the next entry goes to, with its space, before any append. */
    uint8_t *c;
    if ((st = bp__cfile_alloc(&s->ix.efile, full, (size_t)(part + 1) * sizeof(bp__ientry), &c))) return st;
    atomic_store_explicit(&s->ix.chunks[full], (bp__ientry *)c, memory_order_release);
    s->ix.heap_from = full + 1;
  }
  if (!writable && part) {
    const uint8_t *from = bp__cfile_chunk(&s->ix.efile, full);
    bp__ientry *c = malloc(entries_chunk_bytes());
    if (!from || !c) {
      free(c);
      return from ? bp__fail(BP_ENOMEM, "out of memory for index entries") : bp_last_error()->code;
    }
    memcpy(c, from, (size_t)part * sizeof *c);
    atomic_store_explicit(&s->ix.chunks[full], c, memory_order_release);
  }
  return BP_OK;
}

/* Indexes entries [ix.count, to), already in their chunks, into the newest gen. */
static bp_status adopt_entries(bp_store *s, uint64_t to) {
  bp_status st = bp__index_reserve(&s->ix, to - s->ix.count);
  while (!st && s->ix.count < to) st = bp__index_adopt(&s->ix);
  return st;
}

/* Why the chunk CRCs cannot be used, or NULL: index/sums must match its
 * CRC in the state, and the last chunk (filled in part) its own, checked
 * now; the full chunks are checked as they are first touched. */
static const char *check_sums(bp_store *s, const bp__ixstate *st) {
  uint32_t full = (uint32_t)(st->count >> BP__CHUNK_SHIFT);
  uint32_t *e = NULL, *c = NULL, crc;
  if (bp__ixsums_read(s->ixdir, full, &e, &c, &crc) != BP_OK) return "index/sums cannot be read";
  if (crc != st->sums_crc) {
    free(e);
    free(c);
    return "index/sums is damaged (CRC)";
  }
  free((void *)s->ix.sums);
  free((void *)s->scan.sums);
  s->ix.sums = e;
  s->scan.sums = c;
  s->scan.ix = &s->ix;
  uint32_t te, ts;
  tail_crcs(s, st->count, &te, &ts);
  if (te != st->tail_crc) return "its last chunk of entries is damaged (CRC)";
  if (ts != st->scan_tail_crc) return "its last chunk of scan fields is damaged (CRC)";
  return NULL;
}

static void log_damage(void *ctx, const char *msg) { bp__log(ctx, BP_LOG_WARN, "%s", msg); }

/* Chunk ci of the entries read again from the log (its copy in
 * index/entries failed its CRC): the frames of the segments the state
 * listed, walked from the first frame of the segment holding the chunk's
 * first event. An event whose frame cannot be read stays zeroed (length 0),
 * so that every read of it fails. */
static bp__ientry *repair_chunk(void *ctx, uint32_t ci) {
  bp_store *s = ctx;
  bp__ientry *c = calloc(BP__CHUNK_SIZE, sizeof *c);
  if (!c) return NULL;
  uint64_t first = (uint64_t)ci << BP__CHUNK_SHIFT;
  bp__log(s, BP_LOG_WARN, "%s: index entries %" PRIu64 "..%" PRIu64 " fail their CRC; reading them from the log",
          s->ixdir, first, first + BP__CHUNK_SIZE - 1);
  uint32_t j = 0;
  while (j < s->ix_nsegs && s->ix_segs[j].first + s->ix_segs[j].count <= first) j++;
  bp__buf frame;
  bp__buf_init(&frame);
  uint64_t seq = j < s->ix_nsegs ? s->ix_segs[j].first : UINT64_MAX, off = 0;
  bp__segfile f;
  bool have = false;
  while (j < s->ix_nsegs && seq < first + BP__CHUNK_SIZE) {
    const bp__ixseg *g = &s->ix_segs[j];
    if (!have) {
      if (bp__segfile_open(s, g->id, &f) != BP_OK) break;
      off = f.frames_start;
      bp__segfile_close(&f);
      have = true;
    }
    uint8_t pre[BP__FRAME_PREFIX];
    bool ok = off + BP__FRAME_PREFIX <= g->frames_end && bp__segment_read(s, g->id, off, pre, sizeof pre) == BP_OK;
    uint32_t len = ok ? bp__get_be32(pre) : 0;
    ok = ok && len <= g->frames_end - off - BP__FRAME_PREFIX;
    if (ok && seq >= first) {
      ok = bp__buf_reserve(&frame, len) && bp__segment_read(s, g->id, off + BP__FRAME_PREFIX, frame.data, len) == BP_OK &&
           bp__crc32(frame.data, len) == bp__get_be32(pre + 4);
      bp__frame fr;
      ok = ok && bp__frame_decode_body(frame.data, len, NULL, &fr) == BP_OK;
      const bp__name *ent = ok ? bp__index_find_name(&s->ix, fr.entity, fr.entity_len) : NULL;
      const bp__name *scp = ok ? bp__index_find_name(&s->ix, fr.scope, fr.scope_len) : NULL;
      if (ent && scp)
        bp__entry_from_frame(&c[seq - first], &fr, ent->id, scp->id, g->id, off, len + BP__FRAME_PREFIX);
    }
    if (!ok) break; /* the rest stays zeroed */
    off += BP__FRAME_PREFIX + (uint64_t)len;
    if (++seq == g->first + g->count) {
      j++;
      have = false;
    }
  }
  bp__buf_free(&frame);
  return c;
}

/* The frame of the last indexed event is where the index says, with its id
 * and a good CRC. */
static const char *check_last(bp_store *s, const bp__ixstate *st) {
  if (st->count == 0) return NULL;
  const bp__ientry *e = bp__index_at(&s->ix, st->count - 1);
  if (!bp_id_eq(e->event_id, st->last_id)) return "its last entry is not the event its state names";
  if (e->length < BP__FRAME_PREFIX) return "its last entry is damaged";
  uint8_t *raw = malloc(e->length);
  if (!raw) return "out of memory reading its last event's frame";
  bool same = bp__segment_read(s, e->segment_id, e->offset, raw, e->length) == BP_OK &&
              bp__frame_check(raw, e->length, e->segment_id, e->offset) == BP_OK;
  bp__frame fr;
  if (same) same = bp__frame_decode_body(raw + BP__FRAME_PREFIX, e->length - BP__FRAME_PREFIX, NULL, &fr) == BP_OK &&
                   bp_id_eq(fr.header.event_id, e->event_id);
  free(raw);
  return same ? NULL : "its last event's frame is not in the log where it says";
}

void bp__ixstore_evidence(bp_store *s) {
  char ixdir[4200];
  snprintf(ixdir, sizeof ixdir, "%s/%s", s->dir, BP__IX_DIR);
  uint64_t seg, upto;
  int64_t epoch;
  if (bp__ixstate_tail(ixdir, &seg, &upto, &epoch) && epoch == atomic_load(&s->log_epoch)) {
    s->tail_evidence.segment = seg;
    s->tail_evidence.upto = upto;
  }
}

bp_status bp__ixstore_load(bp_store *s, uint64_t *wm_seg, uint64_t *wm_off) {
  bp__ixstate st;
  bp_status rs = bp__ixstate_read(s->ixdir, &st);
  if (rs == BP_ENOTFOUND) return rs;
  if (rs == BP_ENOMEM) return rs;
  const char *why = NULL;
  char reason[512];
  if (rs) {
    snprintf(reason, sizeof reason, "%s", bp_last_error()->message);
    why = reason;
  }
  bool lost = false, fresh = false;
  if (!why) why = check_against_log(s, &st, &lost);
  if (lost && !s->cfg.salvage) {
    bp__ixstate_free(&st);
    return BP_ECORRUPT;
  }
  if (!why && (rs = attach_entries(s, st.count, !s->readonly, &fresh))) {
    if (rs == BP_ENOMEM) goto out;
    snprintf(reason, sizeof reason, "%s", bp_last_error()->message);
    why = reason;
  }
  if (!why && fresh && st.count) why = "index/entries is missing";
  if (!why && (rs = bp__ixnames_read(s->ixdir, st.names_bytes, intern_loaded, s, st.names_crc))) {
    if (rs == BP_ENOMEM) goto out;
    snprintf(reason, sizeof reason, "%s", bp_last_error()->message);
    why = reason;
  }
  if (!why && bp__index_name_count(&s->ix) != st.names) why = "index/names does not hold the names its state counts";
  bp__run runs[BP__IX_MAX_RUNS];
  uint32_t mapped = 0;
  for (uint32_t i = 0; !why && i < st.nruns; i++, mapped++) {
    if ((rs = bp__run_map(s->ixdir, &st.runs[i], false, &runs[i]))) {
      if (rs == BP_ENOMEM) goto unmap;
      snprintf(reason, sizeof reason, "%s", bp_last_error()->message);
      why = reason;
    }
  }
  if (!why) {
    char p[4400];
    file_in(s, BP__IX_SCAN, p, sizeof p);
    if ((rs = bp__scan_open_file(&s->scan, p, !s->readonly, st.count, &fresh))) {
      if (rs == BP_ENOMEM) goto unmap;
      snprintf(reason, sizeof reason, "%s", bp_last_error()->message);
      why = reason;
    } else if (fresh && st.count) {
      why = "index/scan is missing";
    }
  }
  /* The CRCs first: entries are read from here on, each chunk checked as
   * it is first touched. */
  if (!why) why = check_sums(s, &st);
  if (!why) {
    /* A chunk that fails its CRC is read again from the segments. */
    free(s->ix_segs);
    s->ix_segs = st.segs;
    s->ix_nsegs = st.nsegs;
    st.segs = NULL;
    st.nsegs = 0;
    s->ix.repair = repair_chunk;
    s->ix.repair_ctx = s;
    s->ix.log = log_damage;
    s->ix.log_ctx = s;
    uint64_t runs_end = st.nruns ? st.runs[st.nruns - 1].end : 0;
    bp__index_set_runs(&s->ix, runs, st.nruns, runs_end);
    mapped = 0; /* the index owns them now */
    s->ix.count = runs_end;
    if ((rs = adopt_entries(s, st.count))) {
      if (rs == BP_ENOMEM) goto unmap;
      snprintf(reason, sizeof reason, "%s", bp_last_error()->message);
      why = reason;
    }
  }
  if (!why) why = check_last(s, &st);
  if (why) {
    bp__log(s, BP_LOG_WARN, "%s/%s not used, %s: %s", s->dir, BP__IX_DIR,
            s->readonly ? "indexing the log in memory" : "rebuilding it", why);
    rs = BP_ENOTFOUND;
    goto unmap;
  }
  if (!s->readonly) {
    remove_strays(s, &st);
    tidy_past_end(s, &st);
  }
  s->ix_names_written = (uint32_t)st.names;
  s->ix_names_bytes = st.names_bytes;
  s->ix_names_crc = st.names_crc;
  s->ix_sums_written = (uint32_t)(st.count >> BP__CHUNK_SHIFT);
  s->ix_sums_crc = st.sums_crc;
  s->ix_next_run = st.next_run_no;
  s->ix_state_count = st.count;
  s->ix_state_runs_end = st.nruns ? st.runs[st.nruns - 1].end : 0;
  s->ix_state_at = st.at;
  *wm_seg = 0;
  *wm_off = 0;
  if (st.count) {
    const bp__ientry *e = bp__index_at(&s->ix, st.count - 1);
    *wm_seg = e->segment_id;
    *wm_off = e->offset + e->length;
  }
  rs = BP_OK;
  goto out;
unmap:
  for (uint32_t i = 0; i < mapped; i++) bp__run_unmap(&runs[i]);
out:
  bp__ixstate_free(&st);
  return rs;
}

/* What the store knows of its index files, for files just made empty. */
static void start_counts(bp_store *s) {
  s->ix_names_written = 1;
  s->ix_names_bytes = 0;
  s->ix_names_crc = 0;
  s->ix_sums_written = 0;
  s->ix_sums_crc = 0;
  s->ix_next_run = 1;
  s->ix_state_count = 0;
  s->ix_state_runs_end = 0;
  memset(&s->ix_state_at, 0, sizeof s->ix_state_at);
}

bp_status bp__ixstore_create(bp_store *s) {
  /* The old state stays until the new index replaces it: until then it is
   * still the evidence of where the newest segment's durable frames end
   * (tail_evidence), for this open's scan and for the next open's, should
   * this one fail. */
  int rc = bp__ixdir_clear(s->ixdir, BP__IX_STATE);
  if (rc) return bp__fail_errno(BP_EIO, rc, "remove %s", s->ixdir);
  bp_status st = bp__ixdir_make(s->ixdir);
  bool fresh;
  if (!st) st = attach_entries(s, 0, true, &fresh);
  char p[4400];
  file_in(s, BP__IX_SCAN, p, sizeof p);
  if (!st) st = bp__scan_open_file(&s->scan, p, true, 0, &fresh);
  start_counts(s);
  return st;
}

/* ----------------------------------------------------- runs and merges */

static uint32_t level_of(uint64_t events) {
  uint32_t level = 0;
  for (uint64_t span = (uint64_t)BP__GEN_EVENTS * MERGE_FANOUT; events >= span && level < 12; span *= MERGE_FANOUT)
    level++;
  return level;
}

/* Swaps the index's view under the view lock (exclusive) and the writer's
 * lock, then frees what the old views held: no reader or writer can hold it
 * once both were taken. in_open: no other thread exists yet. */
static bp_status swap_runs(bp_store *s, bp__run *covering, uint32_t from, uint32_t k, bp__run *merged, bool in_open) {
  if (!in_open) {
    pthread_rwlock_wrlock(&s->view_lock);
    pthread_mutex_lock(&s->wlock);
  }
  bp_status st = bp__index_swap_runs(&s->ix, covering, from, k, merged);
  bp__index_reclaim(&s->ix);
  if (!in_open) {
    pthread_mutex_unlock(&s->wlock);
    pthread_rwlock_unlock(&s->view_lock);
  }
  return st;
}

/* Writes the oldest frozen gen as a run and puts it in place of the gen.
 * Returns BP_ENOTFOUND when there is none. */
static bp_status spill_one(bp_store *s, bool in_open) {
  uint64_t first, end;
  if (!bp__index_frozen(&s->ix, &first, &end)) return BP_ENOTFOUND;
  if (bp__index_runs(&s->ix)->n >= BP__IX_MAX_RUNS) {
    /* No room for another run until the index thread merges (sessions too
     * short to merge left this many): the frozen gens stay in memory, and
     * the store works as well, only with more of its index on the heap. */
    bp__log(s, BP_LOG_INFO, "index: %u runs, the most a state lists; newer events stay indexed in memory until "
            "they are merged", BP__IX_MAX_RUNS);
    return BP_ENOTFOUND;
  }
  bp__ixrun_ref ref = {s->ix_next_run++, first, end, level_of(end - first)};
  bp_status st = bp__run_build(s->ixdir, &ref, bp__index_name_count(&s->ix), entry_of, s, &s->ixcancel);
  bp__run run;
  if (!st) st = bp__run_map(s->ixdir, &ref, true, &run);
  if (!st && (st = swap_runs(s, &run, 0, 0, NULL, in_open))) bp__run_unmap(&run);
  return st;
}

/* What a state written now may claim: the runs' events whose frames are
 * durable, and never less than the last state did. */
static uint64_t state_count(bp_store *s) {
  uint64_t end = bp__index_runs(&s->ix)->end, durable = atomic_load(&s->durable);
  uint64_t c = end < durable ? end : durable;
  return c > s->ix_state_count ? c : s->ix_state_count;
}

/* Past this many runs the newest MERGE_FANOUT are merged whatever their
 * levels: sessions too short to merge (a close abandons a merge) leave runs
 * of the lowest level behind, and a state lists at most BP__IX_MAX_RUNS.
 * Well above what the levels hold by themselves (MERGE_FANOUT - 1 runs a
 * level, 42 for two billion events), so that a healthy index never merges
 * for this reason: every session would start such a merge, and every short
 * one abandon it at close. */
#define RUNS_CROWDED (BP__IX_MAX_RUNS - MERGE_FANOUT)

/* Merges the newest MERGE_FANOUT runs when they share a level (or when
 * there are too many runs), and again while that makes a full level above.
 * Returns whether anything merged. */
static bp_status merge_levels(bp_store *s, bool in_open, bool *merged_any) {
  *merged_any = false;
  for (;;) {
    if (atomic_load(&s->ixcancel)) return BP_OK;
    const bp__runset *rs = bp__index_runs(&s->ix);
    if (rs->n < MERGE_FANOUT) return BP_OK;
    uint32_t from = rs->n - MERGE_FANOUT, level = rs->runs[from].ref.level;
    bool crowded = rs->n > RUNS_CROWDED;
    for (uint32_t i = from; i < rs->n && !crowded; i++)
      if (rs->runs[i].ref.level != level) return BP_OK;
    /* A crowded merge takes the level its size warrants. */
    uint32_t merged_level = crowded ? level_of(rs->runs[rs->n - 1].ref.end - rs->runs[from].ref.first) : level + 1;
    bp__ixrun_ref ref = {s->ix_next_run++, rs->runs[from].ref.first, rs->runs[rs->n - 1].ref.end, merged_level};
    uint64_t gone[MERGE_FANOUT];
    for (uint32_t i = 0; i < MERGE_FANOUT; i++) gone[i] = rs->runs[from + i].ref.no;
    bp_status st = bp__run_build(s->ixdir, &ref, bp__index_name_count(&s->ix), entry_of, s, &s->ixcancel);
    bp__run run;
    if (!st) st = bp__run_map(s->ixdir, &ref, true, &run);
    if (!st && (st = swap_runs(s, NULL, from, MERGE_FANOUT, &run, in_open))) bp__run_unmap(&run);
    if (st) return st;
    *merged_any = true;
    /* The merged-away files go once a state no longer names them. */
    if ((st = write_state(s, state_count(s)))) return st;
    for (uint32_t i = 0; i < MERGE_FANOUT; i++) {
      char p[4400];
      bp__run_path(s->ixdir, gone[i], p, sizeof p);
      bp__os_table.unlink(p);
    }
  }
}

/* Spills every frozen gen and merges; then, when the frames of everything
 * the runs cover are durable, says so in the state. */
static bp_status spill_all(bp_store *s, bool in_open) {
  bp_status st;
  bool spilled = false;
  while ((st = spill_one(s, in_open)) == BP_OK) spilled = true;
  if (st != BP_ENOTFOUND) return st;
  st = BP_OK;
  /* Merges are the index thread's, and only in a session that writes runs
   * itself: an open does not wait for one, and a short session that only
   * reads would start one for its close to abandon. */
  if (spilled && !in_open) s->ix_spilled_here = true;
  bool merged = false;
  bool crowded = bp__index_runs(&s->ix)->n > RUNS_CROWDED;
  if (!in_open && (s->ix_spilled_here || crowded) && (st = merge_levels(s, in_open, &merged))) return st;
  /* Room again: what could not be spilled goes now. */
  if (merged && crowded) {
    while ((st = spill_one(s, in_open)) == BP_OK) spilled = true;
    if (st != BP_ENOTFOUND) return st;
    st = BP_OK;
  }
  if (spilled && !merged && state_count(s) > s->ix_state_count) st = write_state(s, state_count(s));
  return st;
}

bp_status bp__ixstore_drain(bp_store *s) {
  if (!s->ixon) return BP_OK;
  bp__index_publish(&s->ix);
  return spill_all(s, true);
}

static void *index_thread(void *arg) {
  bp_store *s = arg;
  /* Background work: below the callers' threads (and the query helpers)
   * when the CPUs are busy, so that it never takes their time. */
  (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);
  pthread_mutex_lock(&s->ixlock);
  while (!s->ixstop) {
    if (!s->ixwake) {
      pthread_cond_wait(&s->ixcond, &s->ixlock);
      continue;
    }
    s->ixwake = false;
    pthread_mutex_unlock(&s->ixlock);
    if (spill_all(s, false) != BP_OK)
      bp__log(s, BP_LOG_WARN, "index: %s (the next open rebuilds what is missing)", bp_last_error()->message);
    pthread_mutex_lock(&s->ixlock);
  }
  pthread_mutex_unlock(&s->ixlock);
  return NULL;
}

static void wake_index_thread(void *ctx) {
  bp_store *s = ctx;
  pthread_mutex_lock(&s->ixlock);
  s->ixwake = true;
  pthread_cond_signal(&s->ixcond);
  pthread_mutex_unlock(&s->ixlock);
}

bp_status bp__ixstore_start(bp_store *s) {
  if (!s->ixon || s->ixthread_started) return BP_OK;
  s->ixstop = false;
  atomic_store(&s->ixcancel, false);
  s->ix.on_freeze = wake_index_thread;
  s->ix.on_freeze_ctx = s;
  pthread_attr_t a;
  pthread_attr_init(&a);
  if (s->cfg.writer_stack_size) pthread_attr_setstacksize(&a, s->cfg.writer_stack_size);
  int rc = pthread_create(&s->ixthread, &a, index_thread, s);
  pthread_attr_destroy(&a);
  if (rc) {
    s->ix.on_freeze = NULL;
    return bp__fail_errno(BP_EIO, rc, "start the index thread of %s", s->dir);
  }
  s->ixthread_started = true;
  /* Gens frozen while the open loaded the log. */
  wake_index_thread(s);
  return BP_OK;
}

/* Stops the index thread; a run it is writing is abandoned. */
static void stop_thread(bp_store *s) {
  if (!s->ixthread_started) return;
    atomic_store(&s->ixcancel, true);
    pthread_mutex_lock(&s->ixlock);
    s->ixstop = true;
    pthread_cond_signal(&s->ixcond);
    pthread_mutex_unlock(&s->ixlock);
    pthread_join(s->ixthread, NULL);
    s->ixthread_started = false;
}

/* The index of a log a compaction renumbered, written whole from the
 * in-memory index that the compaction built: entries and scan fields chunk
 * by chunk, names, runs of the largest sizes that fit, and the state. */
static bp_status rebuild_from_memory(bp_store *s) {
  uint64_t count = s->ix.count;
  int rc = bp__ixdir_remove(s->ixdir);
  if (rc) return bp__fail_errno(BP_EIO, rc, "remove %s", s->ixdir);
  bp_status st = bp__ixdir_make(s->ixdir);
  if (st) return st;
  char pe[4400], ps[4400];
  file_in(s, BP__IX_ENTRIES, pe, sizeof pe);
  file_in(s, BP__IX_SCAN, ps, sizeof ps);
  bp__cfile ef, sf;
  bool fresh;
  size_t scan_bytes = bp__scan_chunk_bytes(&s->scan);
  if ((st = bp__cfile_open(&ef, pe, ENTRIES_MAGIC, (uint32_t)sizeof(bp__ientry), entries_chunk_bytes(), true, &fresh)))
    return st;
  if ((st = bp__cfile_open(&sf, ps, "BPXSCAN1", (uint32_t)s->cfg.index_layout, scan_bytes, true, &fresh))) {
    bp__cfile_close(&ef);
    return st;
  }
  for (uint64_t first = 0; first < count && !st; first += BP__CHUNK_SIZE) {
    uint32_t ci = (uint32_t)(first >> BP__CHUNK_SHIFT), n = count - first < BP__CHUNK_SIZE ? (uint32_t)(count - first) : BP__CHUNK_SIZE;
    uint8_t *e, *c;
    if ((st = bp__cfile_alloc(&ef, ci, (size_t)n * sizeof(bp__ientry), &e)) ||
        (st = bp__cfile_alloc(&sf, ci, scan_bytes, &c)))
      break;
    memcpy(e, bp__index_at(&s->ix, first), (size_t)n * sizeof(bp__ientry));
    const uint8_t *from = atomic_load_explicit(&s->scan.chunks[ci], memory_order_acquire);
    memcpy(c, from, scan_bytes);
    if (n < BP__CHUNK_SIZE) bp__scan_chunk_clear_from(&s->scan, c, n, true);
  }
  if (!st && ((rc = bp__cfile_sync(&ef)) || (rc = bp__cfile_sync(&sf))))
    st = bp__fail_errno(BP_EIO, rc, "sync the index files of %s", s->dir);
  bp__cfile_close(&ef);
  bp__cfile_close(&sf);
  if (st) return st;
  start_counts(s);
  bp__ixrun_ref refs[BP__IX_MAX_RUNS];
  uint32_t nrefs = 0;
  uint64_t first = 0;
  for (int level = 4; level >= 0 && !st; level--) {
    uint64_t span = BP__GEN_EVENTS;
    for (int k = 0; k < level; k++) span *= MERGE_FANOUT;
    while (count - first >= span && nrefs < BP__IX_MAX_RUNS && !st) {
      refs[nrefs] = (bp__ixrun_ref){s->ix_next_run++, first, first + span, (uint32_t)level};
      st = bp__run_build(s->ixdir, &refs[nrefs], bp__index_name_count(&s->ix), entry_of, s, NULL);
      first += span;
      nrefs++;
    }
  }
  if (!st) st = write_state_with(s, count, refs, nrefs);
  return st;
}

bp_status bp__ixstore_close(bp_store *s) {
  if (s->ixdir && !s->ixon && !s->readonly && atomic_load(&s->generation) > 0 && s->ix.count > 0) {
    /* A compaction dropped the index this open began with. */
    if (rebuild_from_memory(s))
      bp__log(s, BP_LOG_WARN, "index not written after the compaction (the next open builds it): %s",
              bp_last_error()->message);
    return BP_OK;
  }
  if (!s->ixon) return BP_OK;
  stop_thread(s);
  /* Gens the thread had not written yet are written now (a few thousand
   * events each, at most BP__MAX_GENS): left in memory, every later open
   * would index them again. A merge in progress is abandoned. */
  atomic_store(&s->ixcancel, false);
  bp_status st;
  while ((st = spill_one(s, false)) == BP_OK) {}
  if (st != BP_ENOTFOUND)
    bp__log(s, BP_LOG_WARN, "index run not written at close: %s", bp_last_error()->message);
  /* Everything the index holds is durable in the log by now (the writer
   * sealed or synced its segment): an open that appended nothing writes
   * nothing. */
  uint64_t count = s->ix.count;
  if (count == s->ix_state_count && bp__index_runs(&s->ix)->end == s->ix_state_runs_end)
    return BP_OK; /* names of refused appends are not kept */
  /* The index is derived from the log, which holds every event by now: a
   * failure here costs the next open a rebuild, and is no error of close. */
  if (write_state(s, count))
    bp__log(s, BP_LOG_WARN, "index state not written (the next open rebuilds from the log): %s",
            bp_last_error()->message);
  return BP_OK;
}

bp_status bp__ixstore_persist(bp_store *s) { return s->ixon ? write_state(s, s->ix.count) : BP_OK; }

void bp__ixstore_detach(bp_store *s) {
  if (!s->ixon) return;
  stop_thread(s);
  /* The segments the states listed are those of the log before the
   * compaction: the next state is made from the new index alone. */
  free(s->ix_wsegs);
  s->ix_wsegs = NULL;
  s->ix_nwsegs = 0;
  s->ix_nsegs = 0;
  s->ix.on_freeze = NULL;
  s->ix.freeze = false;
  s->ixon = false;
  int rc = bp__ixdir_remove(s->ixdir);
  if (rc) bp__log(s, BP_LOG_WARN, "could not remove %s: %s (the next open sees it is stale)", s->ixdir, strerror(rc));
}

void bp__ixstore_pause(bp_store *s) { stop_thread(s); }

void bp__ixstore_detach_quietly(bp_store *s) {
  stop_thread(s);
  s->ix.on_freeze = NULL;
}
