/*
 * verify.c - bp_verify: a full check of a store directory.
 *
 * It reads every segment from front to back (whatever its footer says),
 * checking each frame; compares each SIDX footer, entry by entry, with the
 * frames; follows every entity's chain across segments; checks the files
 * of the persistent index against their CRCs; and compares the index the
 * checkpoint, and the persistent index, restore with the one the segments
 * alone give.
 */
#include "store/cursor_file.h"
#include "store/store_impl.h"

#include <sys/stat.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct chain_head {
  char *entity;
  uint32_t next_clock;
  uint8_t last_hash[32];
  bool last_in_lowest;      /* its last event so far lies in the lowest segment */
} chain_head;

typedef struct vctx {
  bp_verify_report *rep;
  size_t cap;
  bool oom;
  chain_head *heads;
  size_t nheads, headcap;
  bool lowest;              /* checking the store's lowest segment */
  bool retention_ran;       /* retired.keys holds keys: retention dropped events */
  int64_t log_epoch;        /* created_ns of the lowest segment */
  /* The index state's newest segment and where its durable frames end (and
   * the log it was made for): frames of that segment, unsealed, must reach
   * that far; short of it is damage, not a torn tail. */
  uint64_t tail_seg, tail_upto;
  int64_t tail_epoch;
} vctx;

BP__PRINTF(3, 4) static void problem(vctx *v, const char *where, const char *fmt, ...) {
  bp_verify_report *r = v->rep;
  if (r->problem_count == v->cap) {
    size_t cap = v->cap ? v->cap * 2 : 16;
    bp_verify_problem *n = realloc(r->problems, cap * sizeof *n);
    if (!n) {
      v->oom = true;
      return;
    }
    r->problems = n;
    v->cap = cap;
  }
  bp_verify_problem *p = &r->problems[r->problem_count++];
  snprintf(p->where, sizeof p->where, "%s", where);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(p->what, sizeof p->what, fmt, ap);
  va_end(ap);
}

static chain_head *head_of(vctx *v, const char *entity, size_t len) {
  for (size_t i = 0; i < v->nheads; i++)
    if (strlen(v->heads[i].entity) == len && memcmp(v->heads[i].entity, entity, len) == 0) return &v->heads[i];
  if (v->nheads == v->headcap) {
    size_t cap = v->headcap ? v->headcap * 2 : 16;
    chain_head *n = realloc(v->heads, cap * sizeof *n);
    if (!n) return NULL;
    v->heads = n;
    v->headcap = cap;
  }
  chain_head *h = &v->heads[v->nheads];
  memset(h, 0, sizeof *h);
  h->entity = malloc(len + 1);
  if (!h->entity) return NULL;
  memcpy(h->entity, entity, len);
  h->entity[len] = 0;
  v->nheads++;
  return h;
}

/* One decoded frame, kept for the footer comparison. */
typedef struct vframe {
  bp__frame f;
  uint64_t off;
  uint32_t len;
} vframe;

static void check_footer(vctx *v, const char *where, const uint8_t *d, size_t size, size_t frames_end,
                         const vframe *fr, size_t nfr, uint64_t first_seq) {
  const uint8_t *t = d + size - BP__SIDX_TRAILER_SIZE;
  uint64_t st_off = bp__get_le64(t), count = bp__get_le32(t + 8);
  if (st_off != frames_end) {
    problem(v, where, "SIDX footer: frames end at %zu but the string table is said to start at %" PRIu64, frames_end,
            st_off);
    return;
  }
  if (count != nfr) problem(v, where, "SIDX footer: %" PRIu64 " entries for %zu frames", count, nfr);
  if (count * BP__SIDX_ENTRY_SIZE > size - BP__SIDX_TRAILER_SIZE - st_off) {
    problem(v, where, "SIDX footer: entry count %" PRIu64 " does not fit", count);
    return;
  }
  size_t entries_at = size - BP__SIDX_TRAILER_SIZE - (size_t)count * BP__SIDX_ENTRY_SIZE;
  bp__mp_reader r;
  bp__mp_reader_init(&r, d + st_off, entries_at - st_off);
  uint32_t nstr;
  if (bp__mp_read_array(&r, &nstr) != BP_OK || nstr > bp__mp_remaining(&r)) {
    problem(v, where, "SIDX footer: the string table does not decode");
    return;
  }
  const char **strs = calloc(nstr ? nstr : 1, sizeof *strs);
  uint32_t *lens = calloc(nstr ? nstr : 1, sizeof *lens);
  if (!strs || !lens) {
    /* The whole check fails BP_ENOMEM; this footer has no problem to report. */
    v->oom = true;
    free(strs);
    free(lens);
    return;
  }
  bool ok = true;
  for (uint32_t i = 0; ok && i < nstr; i++) ok = bp__mp_read_str(&r, &strs[i], &lens[i]) == BP_OK;
  uint32_t names = nstr;
  int seal = ok && bp__mp_remaining(&r) == 0
                 ? bp__sidx_seal_check(d + st_off, entries_at - st_off, d + entries_at, size - entries_at, &names)
                 : -1;
  if (!ok || bp__mp_remaining(&r) != 0) {
    problem(v, where, "SIDX footer: the string table does not decode");
  } else {
    if (seal == 2) problem(v, where, "SIDX footer: its seal does not match (the footer is damaged)");
    /* Every name is some entry's entity or scope: a string no entry uses
     * (a seal whose start is damaged, say) is not a footer's. */
    uint8_t *used = calloc(names ? names : 1, 1);
    if (!used) v->oom = true;
    for (uint64_t i = 0; used && i < count; i++) {
      const uint8_t *p = d + entries_at + i * BP__SIDX_ENTRY_SIZE;
      uint32_t ei = bp__get_le32(p + 16), si = bp__get_le32(p + 20);
      if (ei < names) used[ei] = 1;
      if (si < names) used[si] = 1;
    }
    for (uint32_t i = 0; used && i < names; i++)
      if (!used[i]) {
        problem(v, where, "SIDX footer: string %u of the table is used by no entry", i);
        break;
      }
    free(used);
    for (uint64_t i = 0; i < count && i < nfr; i++) {
      const uint8_t *p = d + entries_at + i * BP__SIDX_ENTRY_SIZE;
      const bp__frame *f = &fr[i].f;
      uint32_t ei = bp__get_le32(p + 16), si = bp__get_le32(p + 20);
      bp_id id = {bp__get_le64(p + 8), bp__get_le64(p)};
      bp_id corr = {bp__get_le64(p + 130), bp__get_le64(p + 122)};
      bp_id caus = {bp__get_le64(p + 146), bp__get_le64(p + 138)};
      const char *bad = NULL;
      if (!bp_id_eq(id, f->header.event_id)) bad = "event_id";
      else if (ei >= names || lens[ei] != f->entity_len || memcmp(strs[ei], f->entity, f->entity_len)) bad = "entity";
      else if (si >= names || lens[si] != f->scope_len || memcmp(strs[si], f->scope, f->scope_len)) bad = "scope";
      else if (bp__get_le16(p + 24) != f->header.kind) bad = "kind";
      else if (bp__get_le64(p + 26) != f->header.position.wall_ms) bad = "wall_ms";
      else if (bp__get_le32(p + 34) != f->header.position.sequence) bad = "clock";
      else if (f->has_chain && memcmp(p + 38, f->chain.prev_hash, 32)) bad = "prev_hash";
      else if (f->has_chain && memcmp(p + 70, f->chain.event_hash, 32)) bad = "event_hash";
      else if (bp__get_le64(p + 102) != fr[i].off || bp__get_le32(p + 110) != fr[i].len) bad = "frame position";
      else if (!bp_id_eq(corr, f->header.correlation_id)) bad = "correlation_id";
      else if (!bp_id_eq(caus, f->header.causation_id)) bad = "causation_id";
      else if (bp__get_le64(p + 114) != first_seq + i) bad = "global_sequence";
      if (bad) problem(v, where, "SIDX footer entry %" PRIu64 ": %s differs from the frame at offset %" PRIu64, i, bad,
                       fr[i].off);
    }
  }
  free(strs);
  free(lens);
}

/* Where a trailing run of batch frames without their closing frame starts in
 * an unsealed segment whose frames begin at off, or (size_t)-1 when there is
 * none. The run ends at a tear or at allocated space. */
static size_t interrupted_batch_at(const uint8_t *d, size_t off, size_t end, bp__buf *scratch) {
  size_t closed = off;
  while (end - off >= BP__FRAME_PREFIX) {
    uint32_t len = bp__get_be32(d + off), crc = bp__get_be32(d + off + 4);
    if (len == 0 || len > end - off - BP__FRAME_PREFIX || bp__crc32(d + off + BP__FRAME_PREFIX, len) != crc) break;
    bp__frame f;
    bool member = bp__frame_decode_body(d + off + BP__FRAME_PREFIX, len, scratch, &f) == BP_OK &&
                  (f.header.flags & BP_FLAG_BATCH_MEMBER);
    off += BP__FRAME_PREFIX + (size_t)len;
    if (!member) closed = off;
  }
  return closed < off ? closed : (size_t)-1;
}

static bool intact_frame_at(const uint8_t *d, size_t off, size_t end) {
  if (off > end || end - off < BP__FRAME_PREFIX) return false;
  uint32_t len = bp__get_be32(d + off);
  return len > 0 && len <= end - off - BP__FRAME_PREFIX &&
         bp__crc32(d + off + BP__FRAME_PREFIX, len) == bp__get_be32(d + off + 4);
}

static void check_segment(vctx *v, const char *dir, uint64_t id) {
  char path[4200], where[96];
  snprintf(path, sizeof path, "%s/%06" PRIu64 ".fbat", dir, id);
  snprintf(where, sizeof where, "segment %06" PRIu64, id);
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    problem(v, where, "cannot open: %s", strerror(errno));
    if (fd >= 0) close(fd);
    return;
  }
  size_t size = (size_t)st.st_size;
  v->rep->segments++;
  if (size == 0) {
    close(fd);
    return;
  }
  const uint8_t *d = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (d == MAP_FAILED) {
    problem(v, where, "cannot map: %s", strerror(errno));
    return;
  }
  bool sealed = size >= 4 && memcmp(d + size - 4, "SIDX", 4) == 0;
  if (!sealed && bp__segment_header_torn(d, size, size)) {
    /* A crash while the header was written: no events, as the store opens it. */
    v->rep->torn_bytes += size;
    munmap((void *)d, size);
    return;
  }
  bp__segment_header h;
  size_t off;
  if (bp__segment_header_decode(d, size, &h, &off) != BP_OK) {
    problem(v, where, "%s", bp_last_error()->message);
    munmap((void *)d, size);
    return;
  }
  if (h.segment_id != id) problem(v, where, "header says segment %" PRIu64, h.segment_id);
  if (v->lowest) v->log_epoch = h.created_ns;
  if (h.flags != 0) problem(v, where, "header flags 0x%x are not defined by format version %u", h.flags, h.version);
  uint64_t first_seq = v->rep->frames;
  size_t end = size;
  if (sealed && size >= off + BP__SIDX_TRAILER_SIZE) {
    uint64_t st_off = bp__get_le64(d + size - BP__SIDX_TRAILER_SIZE);
    if (st_off >= off && st_off <= size - BP__SIDX_TRAILER_SIZE) end = (size_t)st_off;
  }
  vframe *fr = NULL;
  size_t nfr = 0, cap = 0;
  bp__buf scratch;
  bp__buf_init(&scratch);
  /* Opening drops the batch frames an unsealed segment ends with when no
   * closing frame follows them: they are not events, and not counted. */
  size_t batch_cut = sealed ? end : interrupted_batch_at(d, off, end, &scratch);
  while (off < end) {
    char at[64];
    snprintf(at, sizeof at, "segment %06" PRIu64 " offset %zu", id, off);
    if (off == batch_cut) {
      v->rep->torn_bytes += end - off;
      break;
    }
    if (end - off < BP__FRAME_PREFIX) {
      if (sealed) problem(v, at, "a truncated frame prefix");
      else v->rep->torn_bytes += end - off;
      break;
    }
    uint32_t len = bp__get_be32(d + off), crc = bp__get_be32(d + off + 4);
    if (len == 0 && crc == 0 && !sealed) break; /* space allocated ahead */
    if (len > end - off - BP__FRAME_PREFIX) {
      if (sealed) problem(v, at, "frame of %u bytes runs past the frames", len);
      else v->rep->torn_bytes += end - off;
      break;
    }
    const uint8_t *body = d + off + BP__FRAME_PREFIX;
    if (bp__crc32(body, len) != crc) {
      /* In an unsealed segment, a frame a crash cut short (or a power loss
       * garbled) ends the data: what follows is allocated space or junk. An
       * intact frame after it means the damage is not a tear. */
      if (sealed || intact_frame_at(d, off + BP__FRAME_PREFIX + len, end)) problem(v, at, "CRC mismatch");
      else v->rep->torn_bytes += end - off;
      if (!sealed) break;
      off += BP__FRAME_PREFIX + (size_t)len;
      continue;
    }
    if (nfr == cap) {
      cap = cap ? cap * 2 : 64;
      vframe *n = realloc(fr, cap * sizeof *n);
      if (!n) {
        v->oom = true;
        break;
      }
      fr = n;
    }
    vframe *vf = &fr[nfr];
    bp_status dst = bp__frame_decode_body(body, len, &scratch, &vf->f);
    if (dst == BP_ENOMEM) {
      v->oom = true;
      break;
    }
    if (dst != BP_OK) {
      problem(v, at, "frame does not decode: %s", bp_last_error()->message);
      off += BP__FRAME_PREFIX + (size_t)len;
      continue;
    }
    vf->off = off;
    vf->len = len + BP__FRAME_PREFIX;
    nfr++;
    v->rep->frames++;
    uint8_t hash[32];
    bp_compute_hash(vf->f.payload, vf->f.payload_len, hash);
    if (memcmp(hash, vf->f.header.content_hash, 32) != 0) problem(v, at, "content_hash is not the BLAKE3 of the payload");
    if (vf->f.has_chain && memcmp(hash, vf->f.chain.event_hash, 32) != 0)
      problem(v, at, "event_hash is not the BLAKE3 of the payload");
    chain_head *hd = head_of(v, vf->f.entity, vf->f.entity_len);
    if (!hd) {
      v->oom = true;
      break;
    }
    /* A retention compaction leaves its segment under the lowest id, with
     * the events it kept: an entity's clock may jump forward there, its
     * chain linking to an event that was dropped, and so may the entity's
     * next event after that segment (a writer that was open through the
     * compaction goes on from the dropped event), and, once retention has
     * run (retired.keys), an entity's first event seen when retention
     * dropped all those before it. That is the documented shape of a store
     * after retention, not damage; any other jump is. */
    bool first_seen = hd->next_clock == 0 && !hd->last_in_lowest;
    bool retention_gap = (v->lowest || hd->last_in_lowest || (first_seen && v->retention_ran)) &&
                         vf->f.header.position.sequence > hd->next_clock;
    if (vf->f.header.position.sequence != hd->next_clock && !retention_gap) {
      char ew[96];
      snprintf(ew, sizeof ew, "entity %.40s clock %u", hd->entity, vf->f.header.position.sequence);
      problem(v, ew, "expected clock %u (%s)", hd->next_clock, at);
    }
    if (vf->f.has_chain && !retention_gap && memcmp(vf->f.chain.prev_hash, hd->last_hash, 32) != 0) {
      char ew[96];
      snprintf(ew, sizeof ew, "entity %.40s clock %u", hd->entity, vf->f.header.position.sequence);
      problem(v, ew, "prev_hash does not link to the previous event (%s)", at);
    }
    hd->next_clock = vf->f.header.position.sequence + 1;
    hd->last_in_lowest = v->lowest;
    memcpy(hd->last_hash, vf->f.has_chain ? vf->f.chain.event_hash : hash, 32);
    /* Payload views point into scratch; the footer check needs only the rest. */
    vf->f.payload = NULL;
    off += BP__FRAME_PREFIX + (size_t)len;
  }
  if (!sealed && id == v->tail_seg && v->tail_epoch == v->log_epoch && off < v->tail_upto && !v->oom)
    problem(v, where, "its frames end at offset %zu, yet the index state lists frames up to offset %" PRIu64
            " (damage, not a crash)", off, v->tail_upto);
  if (sealed) {
    check_footer(v, where, d, size, off < end ? end : off, fr, nfr, first_seq);
  } else if (nfr > 0 && size - off >= BP__SIDX_TRAILER_SIZE) {
    /* Not sealed, yet what follows the frames is a footer in all but its
     * magic: a damaged footer, not a torn tail. */
    const uint8_t *t = d + size - BP__SIDX_TRAILER_SIZE;
    uint64_t st_off = bp__get_le64(t), count = bp__get_le32(t + 8);
    if (st_off == off && count == nfr && count * BP__SIDX_ENTRY_SIZE <= size - BP__SIDX_TRAILER_SIZE - off)
      problem(v, where, "SIDX footer: the trailer's magic is damaged (the rest of the footer is intact)");
  }
  free(fr);
  bp__buf_free(&scratch);
  munmap((void *)d, size);
}

typedef struct log_capture {
  char last[512];
  bool ckpt_ignored;
} log_capture;

static void capture(int level, const char *msg, void *ctx) {
  log_capture *c = ctx;
  if (level <= BP_LOG_WARN && strstr(msg, "checkpoint")) {
    c->ckpt_ignored = true;
    snprintf(c->last, sizeof c->last, "%s", msg);
  }
}

static bool same_entry(const bp_entry *a, const bp_entry *b) {
  return bp_id_eq(a->event_id, b->event_id) && bp_id_eq(a->correlation_id, b->correlation_id) &&
         bp_id_eq(a->causation_id, b->causation_id) && strcmp(a->entity, b->entity) == 0 &&
         strcmp(a->scope, b->scope) == 0 && a->kind == b->kind && a->wall_ms == b->wall_ms && a->clock == b->clock &&
         memcmp(&a->hash_chain, &b->hash_chain, sizeof a->hash_chain) == 0 &&
         a->disk_pos.segment_id == b->disk_pos.segment_id && a->disk_pos.offset == b->disk_pos.offset &&
         a->disk_pos.length == b->disk_pos.length && a->global_sequence == b->global_sequence;
}

static void compare_with_segments(vctx *v, const char *file, const char *what, bp_store *with);

static void check_checkpoint(vctx *v, const char *dir) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", dir, BP__CHECKPOINT_FILE);
  if (access(path, F_OK) != 0) return;
  log_capture cap = {{0}, false};
  bp_config cfg;
  bp_config_init(&cfg, dir);
  cfg.salvage = true;
  cfg.log_fn = capture;
  cfg.log_ctx = &cap;
  bp_store *with = NULL;
  bp_status st = bp__open_readonly_unindexed(&cfg, &with);
  if (st == BP_ENOMEM) v->oom = true;
  if (st) {
    if (!v->oom) problem(v, "index.ckpt", "the store does not open: %s", bp_last_error()->message);
    return;
  }
  if (cap.ckpt_ignored) {
    problem(v, "index.ckpt", "%s", cap.last);
    bp_close(with);
    return;
  }
  compare_with_segments(v, "index.ckpt", "the checkpoint", with);
}

/* Both indexes of a store opened read-only, with (an index the caller opened
 * by) and without anything but the segments, list the same entries. */
static void compare_with_segments(vctx *v, const char *file, const char *what, bp_store *with) {
  bp_config cfg;
  bp_config_init(&cfg, with->dir);
  cfg.salvage = true;
  cfg.enable_checkpoint = false;
  bp_store *without = NULL;
  bp_status st;
  if ((st = bp_open_readonly(&cfg, &without)) != BP_OK) {
    v->oom |= st == BP_ENOMEM;
    bp_close(with);
    return;
  }
  bp_region all = bp_region_all();
  bp_entries a, b;
  if ((st = bp_query(with, &all, &a)) == BP_OK) {
    if ((st = bp_query(without, &all, &b)) == BP_OK) {
      if (a.len != b.len) problem(v, file, "%s and the segments give %zu and %zu events", what, a.len, b.len);
      for (size_t i = 0; i < a.len && i < b.len; i++)
        if (!same_entry(&a.items[i], &b.items[i])) {
          char w[96];
          snprintf(w, sizeof w, "%s entry %zu", file, i);
          problem(v, w, "differs from the event the segments hold at that sequence");
          break;
        }
      bp_entries_free(&b);
    }
    bp_entries_free(&a);
  }
  v->oom |= st == BP_ENOMEM;
  bp_close(without);
  bp_close(with);
}

/* A failed check of an index file: a problem, or out of memory. */
static void index_problem(vctx *v, bp_status rs, const char *where) {
  if (rs == BP_ENOMEM) v->oom = true;
  else problem(v, where, "%s", bp_last_error()->message);
}

static bp_status name_seen(void *ctx, const char *str, size_t len) {
  (void)ctx, (void)str, (void)len;
  return BP_OK;
}

/* The persistent index (docs/INDEX.md), file by file against the CRCs its
 * state keeps, then its answers against the segments'. An index directory
 * without a state is one a first build left unfinished: nothing to check. */
static void check_index(vctx *v, const char *dir) {
  char ixdir[4200], p[4400], w[128];
  snprintf(ixdir, sizeof ixdir, "%s/%s", dir, BP__IX_DIR);
  bp__ixstate st;
  bp_status rs = bp__ixstate_read(ixdir, &st);
  if (rs == BP_ENOTFOUND) return;
  if (rs == BP_ENOMEM) v->oom = true;
  if (rs) {
    if (!v->oom) problem(v, BP__IX_DIR "/" BP__IX_STATE, "%s", bp_last_error()->message);
    return;
  }
  /* Harmless while the newer copy is whole, but not what was written (a
   * crash tearing the write of a copy is the one innocent cause). */
  if (st.at.other_damage)
    problem(v, BP__IX_DIR "/" BP__IX_STATE, "the copy in slot %u is damaged (%s); the other one is used",
            st.at.slot ^ 1, st.at.other_damage);
  if ((rs = bp__ixnames_read(ixdir, st.names_bytes, name_seen, NULL, st.names_crc)))
    index_problem(v, rs, BP__IX_DIR "/" BP__IX_NAMES);
  /* Bytes past what the state counts (in names, sums, entries and scan
   * fields) are the index's own torn tail after a crash: every open ignores
   * them and a read-write open clears them. */
  uint32_t full = (uint32_t)(st.count >> BP__CHUNK_SHIFT), part = (uint32_t)(st.count & (BP__CHUNK_SIZE - 1));
  uint32_t *esums = NULL, *ssums = NULL, crc = 0;
  if ((rs = bp__ixsums_read(ixdir, full, &esums, &ssums, &crc)) || crc != st.sums_crc) {
    if (rs) index_problem(v, rs, BP__IX_DIR "/" BP__IX_SUMS);
    else problem(v, BP__IX_DIR "/" BP__IX_SUMS, "damaged (CRC)");
    free(esums);
    free(ssums);
    esums = ssums = NULL;
  }
  /* Entries and scan fields, chunk by chunk (the scan file's chunk size
   * follows the layout the state names). */
  bp__scan sc;
  bool scan_ok = bp__scan_init(&sc, (bp_index_layout)st.layout) == BP_OK;
  struct {
    const char *name, *magic;
    uint32_t param;
    size_t chunk;
    const uint32_t *sums;
    uint32_t tail;
  } files[2] = {{BP__IX_ENTRIES, "BPXENTR1", (uint32_t)sizeof(bp__ientry), sizeof(bp__ientry) * BP__CHUNK_SIZE, esums,
                 st.tail_crc},
                {BP__IX_SCAN, "BPXSCAN1", st.layout, scan_ok ? bp__scan_chunk_bytes(&sc) : 0, ssums, st.scan_tail_crc}};
  for (int fi = 0; fi < 2 && files[fi].chunk; fi++) {
    snprintf(p, sizeof p, "%s/%s", ixdir, files[fi].name);
    bp__cfile cf;
    bool fresh;
    if ((rs = bp__cfile_open(&cf, p, files[fi].magic, files[fi].param, files[fi].chunk, false, &fresh))) {
      snprintf(w, sizeof w, "%s/%s", BP__IX_DIR, files[fi].name);
      index_problem(v, rs, w);
      continue;
    }
    if ((fi == 0 ? st.count * sizeof(bp__ientry) : (uint64_t)(full + (part != 0)) * files[fi].chunk) > cf.size) {
      snprintf(w, sizeof w, "%s/%s", BP__IX_DIR, files[fi].name);
      problem(v, w, "shorter than the %" PRIu64 " events its state lists", st.count);
    } else {
      for (uint32_t ci = 0; ci <= full && (ci < full || part); ci++) {
        const uint8_t *c = bp__cfile_chunk(&cf, ci);
        uint32_t got = !c ? 0 : ci == full ? (fi == 0 ? bp__crc32(c, (size_t)part * sizeof(bp__ientry)) : bp__scan_chunk_crc(&sc, c, part))
                                           : bp__crc32(c, files[fi].chunk);
        uint32_t want = ci == full ? files[fi].tail : files[fi].sums ? files[fi].sums[ci] : got;
        if (!c || got != want) {
          snprintf(w, sizeof w, "%s/%s chunk %u", BP__IX_DIR, files[fi].name, ci);
          problem(v, w, "events %" PRIu64 "..%" PRIu64 " fail their CRC", (uint64_t)ci << BP__CHUNK_SHIFT,
                  ((uint64_t)ci << BP__CHUNK_SHIFT) + (ci == full ? part : BP__CHUNK_SIZE) - 1);
        }
      }
    }
    bp__cfile_close(&cf);
  }
  if (scan_ok) bp__scan_free(&sc);
  free(esums);
  free(ssums);
  for (uint32_t i = 0; i < st.nruns; i++) {
    bp__run r;
    snprintf(w, sizeof w, "%s/run-%08" PRIu64, BP__IX_DIR, st.runs[i].no);
    if ((rs = bp__run_map(ixdir, &st.runs[i], false, &r))) {
      index_problem(v, rs, w);
      continue;
    }
    if (bp__run_check_body(&r)) problem(v, w, "%s", bp_last_error()->message);
    bp__run_unmap(&r);
  }
  bp__ixstate_free(&st);
  /* What the index answers, against the segments. */
  bp_config cfg;
  bp_config_init(&cfg, dir);
  cfg.salvage = true;
  bp_store *with = NULL;
  if ((rs = bp_open_readonly(&cfg, &with))) {
    v->oom |= rs == BP_ENOMEM;
    return;
  }
  compare_with_segments(v, BP__IX_DIR, "the persistent index", with);
}

/* This library's own files beside the segments: the retired idempotency
 * keys and the durable cursors, each with its CRC. */
static void check_own_files(vctx *v, const char *dir) {
  bp__retired_keys r;
  bp_status st = bp__retired_load(dir, &r);
  if (st == BP_ENOMEM) v->oom = true;
  else if (st) problem(v, BP__RETIRED_FILE, "%s", bp_last_error()->message);
  bp__retired_free(&r);
  char cdir[4200];
  snprintf(cdir, sizeof cdir, "%s/cursors", dir);
  DIR *d = opendir(cdir);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.' || bp__has_suffix(e->d_name, ".tmp")) continue;
    char path[4500];
    snprintf(path, sizeof path, "%s/%s", cdir, e->d_name);
    bp__cursor_file f;
    st = bp__cursor_file_read(path, &f);
    if (st && st != BP_ENOTFOUND) {
      char w[96];
      snprintf(w, sizeof w, "cursors/%.80s", e->d_name);
      problem(v, w, "%s", bp_last_error()->message);
    }
  }
  closedir(d);
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

/* The size of segment id's file (0 when it cannot be read). */
static uint64_t segment_bytes(const char *dir, uint64_t id) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%06" PRIu64 ".fbat", dir, id);
  struct stat sb;
  return stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
}

bp_status bp_verify(const char *dir, bp_verify_report *rep) { return bp_verify_with_progress(dir, rep, NULL, NULL); }

bp_status bp_verify_with_progress(const char *dir, bp_verify_report *rep, bp_progress_fn fn, void *fn_ctx) {
  if (!dir || !rep) return bp__fail(BP_EINVAL, "bp_verify: NULL argument");
  memset(rep, 0, sizeof *rep);
  DIR *dp = opendir(dir);
  if (!dp) return bp__fail_errno(BP_EIO, errno, "bp_verify: open %s", dir);
  uint64_t *ids = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  while ((e = readdir(dp))) {
    uint64_t id;
    if (!bp__segment_parse_name(e->d_name, &id)) continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 16;
      uint64_t *ni = realloc(ids, cap * sizeof *ni);
      if (!ni) {
        /* Checking only the segments listed so far could pass a bad store. */
        closedir(dp);
        free(ids);
        return bp__fail(BP_ENOMEM, "bp_verify: out of memory listing the segments of %s", dir);
      }
      ids = ni;
    }
    ids[n++] = id;
  }
  closedir(dp);
  if (n > 1) qsort(ids, n, sizeof *ids, cmp_u64);
  vctx v = {rep, 0, false, NULL, 0, 0, false, false, 0, 0, 0, 0};
  {
    char ixdir[4200];
    snprintf(ixdir, sizeof ixdir, "%s/%s", dir, BP__IX_DIR);
    (void)bp__ixstate_tail(ixdir, &v.tail_seg, &v.tail_upto, &v.tail_epoch);
  }
  bp__retired_keys rk;
  if (bp__retired_load(dir, &rk) == BP_OK) v.retention_ran = rk.n > 0;
  bp__retired_free(&rk);
  /* Progress in bytes of segments, the bulk of the work. */
  uint64_t total = 0, done = 0;
  for (size_t i = 0; fn && i < n; i++) total += segment_bytes(dir, ids[i]);
  for (size_t i = 0; i < n; i++) {
    v.lowest = i == 0;
    check_segment(&v, dir, ids[i]);
    if (fn) fn(done += segment_bytes(dir, ids[i]), total, fn_ctx);
  }
  rep->entities = v.nheads;
  check_checkpoint(&v, dir);
  check_index(&v, dir);
  check_own_files(&v, dir);
  for (size_t i = 0; i < v.nheads; i++) free(v.heads[i].entity);
  free(v.heads);
  free(ids);
  if (v.oom) {
    /* The check was cut short, and what it missed may show as problems (a
     * footer longer than the frames read, say): none are reported. */
    free(rep->problems);
    rep->problems = NULL;
    rep->problem_count = 0;
    return bp__fail(BP_ENOMEM, "bp_verify: out of memory");
  }
  if (rep->problem_count)
    return bp__fail(BP_ECORRUPT, "%zu problems; the first: %s: %s", rep->problem_count, rep->problems[0].where,
                    rep->problems[0].what);
  return BP_OK;
}

void bp_verify_report_free(bp_verify_report *rep) {
  if (!rep) return;
  free(rep->problems);
  memset(rep, 0, sizeof *rep);
}
