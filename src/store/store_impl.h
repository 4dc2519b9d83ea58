/*
 * store_impl.h - the bp_store structure and what its files share.
 *
 * Files: store.c (configuration, open, recovery, close), writer.c (the commit
 * path), reader.c (get, queries), segment.c (segment files, SIDX footers,
 * frame scans), checkpoint.c (index.ckpt), index.c, os.c.
 *
 * Locks, always taken in this order when nested:
 *   compact_lock  one compaction at a time (compact.c)
 *   cursor_files_lock  durable cursor files: a commit writes one, a retention
 *              compaction re-anchors them and commits (cursor_file.c)
 *   view_lock  readers shared, a compaction's commit exclusive; a reader may
 *              append while holding it (a callback), the writer never takes it
 *   qlock      the append queue (the waiting appends, leader election, closing)
 *   wlock      the writer: active segment, entity chain heads, index mutation
 *   hint_lock  the active segment's mapping and descriptor, for the page
 *              hints an append gives after releasing wlock (writer.c)
 *   seg_lock   the segment table and the read descriptor cache
 * Readers take only seg_lock, briefly, to find a segment's mapping or
 * descriptor; the index itself is read without locks (index.h).
 */
#ifndef BATPAK_STORE_IMPL_H
#define BATPAK_STORE_IMPL_H

#include "batpak/store.h"
#include "store/index.h"
#include "store/ixfile.h"
#include "store/scan.h"
#include "store/os.h"
#include "store/pool.h"
#include "store/retired.h"
#include "wire/records.h"

#include <pthread.h>

#define BP__LOCK_FILE "batpak.lock"
#define BP__CHECKPOINT_FILE "index.ckpt"
#define BP__CHECKPOINT_TMP "index.ckpt.tmp"
#define BP__COMPACT_INTENT "compact.intent"
#define BP__COMPACT_SUFFIX ".compact"     /* after NNNNNN.fbat: a compaction's new segment */
#define BP__SEGMENT_NEW_SUFFIX ".new"     /* after NNNNNN.fbat: a segment before its header is durable */
#define BP__SIDX_ENTRY_SIZE 154u
#define BP__SIDX_TRAILER_SIZE 16u
#define BP__SIDX_SEAL_MAGIC "\0bpseal1"     /* 8 bytes: the seal string's start (segment.c) */
#define BP__SIDX_SEAL_LEN 16u
/* An internal status, never returned by the API: a read-only handle's view
 * is older than the files (a compaction since); refresh and try again. */
#define BP__ESTALE ((bp_status)1000)
#define BP__HEAD_FILE "batpak.head"
#define BP__HEAD_POLL_MS 50            /* how often a follower looks when it cannot sleep on the head */
/* Address space mapped past the active segment's limit (writer.c, and
 * followers mapping a segment a writer grows). */
#define BP__MAP_SLACK (16u << 20)

typedef struct bp__segment {
  uint64_t id;
  bool sealed;              /* immutable: has (or will only ever have) its footer */
  uint64_t size;            /* bytes in the file */
  uint8_t *map;             /* read-only mapping, or NULL: a sealed segment's whole file, or
                               the active segment's reserved range (bp__segment_map_active) */
  size_t map_len;           /* bytes of map that may be read: the file, or the frames published */
  size_t map_size;          /* bytes mapped (munmap) */
  int rfd;                  /* read descriptor, -1 when closed */
  uint32_t refs;            /* reads using rfd right now */
  uint64_t last_use;        /* LRU tick for the descriptor cache */
} bp__segment;

/* The global sequences one compaction left out, for translating cursor
 * positions taken before it (compact.c). */
typedef struct bp__remap {
  uint64_t generation;      /* the store's generation after that compaction */
  uint32_t *dropped;        /* increasing, in the numbering before it */
  size_t n;
} bp__remap;

/* An index a follower replaced when it reopened a compacted log, kept
 * until bp_close: the names it gave out stay valid that long (follow.c). */
typedef struct bp__grave {
  struct bp__grave *next;
  bp__index ix;
} bp__grave;

/* The head file (head.c): one page the writer and followers map. */
typedef struct bp__head {
  int fd;                   /* -1: not attached */
  struct bp__head_page *page;
  bool writable;            /* mapped writable: a follower can say that it sleeps */
  bool writer;              /* this handle's writer publishes through it */
} bp__head;

/* The head's record, read consistently. */
typedef struct bp__head_rec {
  int64_t epoch;            /* the log epoch the positions are in */
  uint64_t count;           /* events published */
  uint64_t segment, frames_end; /* where the last published frame ends (0, 0: none) */
  uint64_t durable;         /* events known durable */
  bool live;                /* its writer holds it now */
} bp__head_rec;

/* What an append works out for each event before it queues: no lock needed. */
typedef struct bp__prep {
  uint8_t hash[32];         /* the content hash */
  bp_id id;                 /* the idempotency key, or a new UUIDv7 */
  bp_id correlation;        /* the one given, else id */
  bp__frame_parts parts;    /* the frame but for what the commit decides */
} bp__prep;

/* A frame of bp_append_frames, checked and decoded on the caller's thread. */
typedef struct bp__verbatim {
  const uint8_t *bytes;
  uint32_t len;
  bp__frame fr;             /* entity and scope point into bytes; the payload is not kept */
} bp__verbatim;

/* One append call waiting in the queue (a single event or a batch). */
typedef struct bp__req {
  struct bp__req *next;
  const bp_event_in *events;
  const bp__verbatim *frames; /* bp_append_frames: written as they are (events is NULL) */
  size_t n;
  bp__prep *prep;           /* one per event */
  bp_append_receipt *outs;
  bool is_batch;
  bp_status status;
  bp_error err;             /* the failure, copied back to the caller's thread */
  _Atomic bool done;        /* set (release) by the leader that committed it */
} bp__req;

struct bp_store {
  bp_config cfg;
  char *dir;
  bool readonly;
  int lock_fd;
  bp_cache *cache;
  bp__index ix;
  bp__scan scan;            /* the filter fields of every event, in cfg.index_layout */

  /* segments (seg_lock) */
  pthread_mutex_t seg_lock;
  bp__segment *segs;
  size_t nsegs, segcap;
  uint32_t open_rfds;
  uint64_t lru_tick;

  /* the queue (qlock) */
  pthread_mutex_t qlock;
  pthread_cond_t qspace;    /* signalled when the queue shrinks */
  pthread_cond_t qidle;     /* signalled when a leader finishes */
  pthread_cond_t qarrive;   /* signalled when the queue reaches gather_until */
  size_t gather_until;      /* a leader gathering a group waits for this many queued appends (0: none) */
  size_t last_group;        /* appends in the last group */
  uint64_t last_sync_us;    /* duration of the last group's fsync */
  uint64_t write_groups, fsyncs;
  bp__req *qhead, *qtail;
  size_t qlen;
  _Atomic uint32_t appending; /* append calls in progress (submit) */
  bp__pool *helpers;         /* threads that share large reads with their caller (NULL: none) */
  _Atomic uint32_t spinners; /* callers spinning for their append to be committed */
  uint32_t spin_slots;      /* how many may: one CPU fewer than there are */
  _Atomic uint32_t committed; /* moves on when groups were committed or the leader left (bp__park) */
  _Atomic uint32_t sleepers; /* callers parked on committed */
  _Atomic bool leader;      /* a caller is committing the queue (set under qlock) */
  bool closing;
  /* bp_close has begun: an append that sees it leaves at once, touching
   * nothing but appending. The handle's memory outlives bp_close for a while
   * (store.c, "closed handles"), so that such a late call stays safe. */
  _Atomic bool shut;
  uint32_t drained;         /* appends committed after closing began */

  /* the writer (wlock) */
  pthread_mutex_t wlock;
  int wfd;                  /* active segment, -1 when none */
  uint64_t wseg;            /* its id */
  uint64_t wsize;           /* bytes written to it */
  uint64_t wseg_first;      /* global sequence of its first event */
  uint8_t *wmap;            /* shared writable mapping of the active segment, or NULL */
  size_t wmap_len;          /* bytes mapped */
  uint64_t wcap;            /* the file's size: space allocated ahead of wsize */
  uint64_t wpop;            /* the mapping is writable (no fault on write) below this */
  uint64_t wflushed;        /* write-back was started (or done) for bytes below this */
  uint64_t wplain_until;    /* frames below this go through write(), nothing allocated ahead */
  bool wadopted;            /* the active segment was taken over at open, and nothing appended since */
  pthread_mutex_t hint_lock; /* held to change wfd, wmap and wmap_len, and by hints */
  uint64_t wgen;            /* changes when the mapping or descriptor goes away (hint_lock) */
  uint64_t next_segment_id;
  uint32_t unsynced;        /* appends since the last fsync */
  bool failed;              /* failed for good: BP_EWRITER */
  uint32_t restarts;
  uint64_t *restart_times;  /* ms of recent restarts (bounded policy) */
  bp__buf wbuf;             /* frames of the group being committed */

  /* compaction: readers hold view_lock shared while they use the index or
   * segment positions; a compaction's commit holds it exclusively. */
  pthread_rwlock_t view_lock;
  pthread_mutex_t compact_lock;  /* one compaction at a time */
  pthread_mutex_t cursor_files_lock; /* durable cursor files (see the lock order above) */
  _Atomic uint64_t generation;   /* compactions committed since open */
  bp__remap *remaps;             /* view_lock */
  size_t nremaps;

  /* subscriptions (sub_lock) */
  pthread_mutex_t sub_lock;
  struct bp_subscription *subs;
  _Atomic uint32_t nsubs;

  /* diagnostics */
  _Atomic uint64_t durable;
  uint64_t torn_bytes, batch_frames_dropped;
  bp_open_path open_path;
  /* The log's history: the created_ns of its lowest segment's header, which
   * every compaction rewrites with a new time (it merges into the lowest id),
   * 0 while there is no segment. Cached projections carry it (project.c). */
  _Atomic int64_t log_epoch;
  bool ckpt_unusable;       /* index.ckpt was there and not believed (a read-write open removes it) */
  /* The persistent index (ixstore.c, docs/INDEX.md). ixdir is <dir>/index
   * when cfg.enable_checkpoint is set; ixon says its files are attached for
   * writing (a read-write store), and the index thread then turns frozen
   * gens into runs. */
  char *ixdir;
  bool ixon;
  pthread_t ixthread;
  bool ixthread_started;
  pthread_mutex_t ixlock;
  pthread_cond_t ixcond;
  bool ixwake, ixstop;      /* ixlock */
  _Atomic bool ixcancel;    /* close: abandon a run being written */
  uint64_t ix_names_bytes;  /* valid bytes of index/names */
  uint32_t ix_names_written; /* names in it ("" implied) */
  uint64_t ix_next_run;
  uint64_t ix_state_count;  /* events the last index/state written or read claims */
  bp__ixstate_at ix_state_at; /* where the newest copy of index/state is */
  uint64_t ix_state_runs_end; /* where the runs it lists end */
  bool ix_spilled_here;     /* the index thread wrote a run in this session (it may merge) */
  uint32_t ix_names_crc;    /* CRC-32 of index/names */
  uint32_t ix_sums_written; /* full chunks with their CRCs in index/sums */
  uint32_t ix_sums_crc;     /* CRC-32 of its records */
  bp__ixseg *ix_segs;       /* the segments of the state read at open (chunk repair) */
  uint32_t ix_nsegs;
  bp__ixseg *ix_wsegs;      /* the segments of the last state this process wrote */
  uint32_t ix_nwsegs;
  /* Keys of events retention dropped (retired.c): read by the writer (wlock),
   * replaced by a compaction's swap (wlock and view_lock held). */
  bp__retired_keys retired;
  /* A checkpoint whose CRC holds but which names a segment that is missing,
   * or events past a segment's end (checkpoint.c): either it lies, or that
   * segment lost events. Recovery tells which (store.c). 0: none. */
  struct {
    uint64_t segment, upto;
  } ckpt_evidence;
  /* Where an intact index state (index/state, of this log) says the frames
   * of its newest segment went on to: durable frames, which no crash takes.
   * A scan that stops short of it in that segment found damage, not a torn
   * tail (segment.c). 0: none. */
  struct {
    uint64_t segment, upto;
  } tail_evidence;
  uint32_t from_sidx, scanned;
  /* The head file: the writer's, or a follower's view of it. */
  bp__head head;
  /* A read-only handle following a writer (follow.c): where the frames it
   * has indexed end (segment 0: it has none yet), and its thread, which
   * sleeps on the head's futex and refreshes while subscriptions exist. */
  struct {
    uint64_t segment, end;
    int64_t created;        /* that segment's header time (0: not known) */
  } fpos;
  bool head_capped;         /* a read-only open reads up to fpos only (a live writer's head) */
  bp__grave *graves;        /* indexes replaced by reopening (follow.c) */
  pthread_t fthread;
  bool fthread_started;
  _Atomic bool fstop;
  /* Segments whose SIDX footer a read-write open writes anew once recovery
   * is done (segment.c, bp__segment_fix_footers): a crashed segment (no
   * footer: its torn or zero tail is cut off), a footer of ours that is
   * damaged, and one that numbers its events differently from their place in
   * the log (a crash between a retention compaction and the rewrite of a
   * later footer). */
  struct bp__footer_fix {
    uint64_t id, first, count, frames_end;
    int why;                /* BP__FIX_CRASHED, _DAMAGED or _STALE */
  } *footer_fixes;
  size_t nfooter_fixes;
};

static inline bool bp__has_suffix(const char *name, const char *suffix) {
  size_t n = strlen(name), k = strlen(suffix);
  return n > k && strcmp(name + n - k, suffix) == 0;
}

/* ---- logging ---- */
void bp__log(bp_store *s, int level, const char *fmt, ...) BP__PRINTF(3, 4);
int64_t bp__now_us(const bp_store *s);

/* ---- segments (segment.c) ---- */
void bp__segment_path(const bp_store *s, uint64_t id, char *buf, size_t size);
/* Parses "NNNNNN.fbat" (six or more digits); false for any other name. */
bool bp__segment_parse_name(const char *name, uint64_t *id);
/* Registers a segment in the table (seg_lock taken inside). */
bp_status bp__segment_add(bp_store *s, uint64_t id, bool sealed, uint64_t size);
/* Marks a segment sealed with its final size. */
void bp__segment_sealed(bp_store *s, uint64_t id, uint64_t size);
/* Segment id becomes the active one again (a read-write open goes on with
 * it), size bytes long; a mapping made for reading it is dropped (open: no
 * reader yet). */
void bp__segment_unseal(bp_store *s, uint64_t id, uint64_t size);
/* Reads len bytes at off of segment id into buf. Errors: BP_EIO, BP_ECORRUPT. */
bp_status bp__segment_read(bp_store *s, uint64_t id, uint64_t off, void *buf, size_t len);
/* The mapping of a segment that is mapped (a sealed one once read, the active
 * one from its creation), how much of it may be read in *len, or NULL. The
 * pointer stays valid while the caller holds the view lock; *len only grows. */
const uint8_t *bp__segment_map(bp_store *s, uint64_t id, size_t *len);
/* Maps the active segment id (descriptor fd) read-only at its full reserved
 * size, so that readers take its frames from memory instead of calling pread
 * per frame; only the bytes bp__segment_readable allowed are ever read (the
 * rest may lie past the end of the file). Without a mapping (an absurd size,
 * mmap failing) reads use pread, as before. */
void bp__segment_map_active(bp_store *s, uint64_t id, int fd, uint64_t reserve);
/* Frames of segment id up to byte upto are published: readers may read them
 * through its mapping. */
void bp__segment_readable(bp_store *s, uint64_t id, uint64_t upto);
/* Lets the pages of a mapped segment leave this process's memory (they stay
 * in the page cache; the mapping stays valid, a later read faults them back
 * in): for readers that have passed a whole segment and will not return. */
void bp__segment_release(bp_store *s, uint64_t id);
/* Unmaps and closes everything. */
void bp__segments_free(bp_store *s);
/* Checks a whole frame of len bytes (prefix included) read from segment seg
 * at offset off: its length field says len, and its CRC holds. Errors:
 * BP_ECORRUPT (length), BP_ECRC. */
bp_status bp__frame_check(const uint8_t *frame, uint32_t len, uint64_t seg, uint64_t off);

/* Appends the SIDX footer of entries [first, end) (all in one segment whose
 * frames end at frames_end) to b. Errors: BP_ENOMEM. */
bp_status bp__sidx_encode(const bp__index *ix, uint64_t first, uint64_t end, uint64_t frames_end,
                          bp__buf *b);
/* Writes that footer to fd right after the frames (at frames_end), a piece
 * at a time, its length in *len. Returns 0, ENOMEM or an errno value. */
int bp__sidx_write(const bp__index *ix, uint64_t first, uint64_t end, uint64_t frames_end, int fd, uint64_t *len);
/* Checks a footer's seal. table is its string table (table_len bytes, up to
 * the entries), rest the entries and the trailer. Returns 1 when the last
 * string is a seal that matches, 2 when it is a seal that does not (the
 * footer is damaged), 0 when there is no seal, -1 when the table does not
 * decode; *names is the number of strings before the seal (every string when
 * there is none). */
int bp__sidx_seal_check(const uint8_t *table, size_t table_len, const uint8_t *rest, size_t rest_len,
                        uint32_t *names);
/* That footer's length in bytes, without encoding its entries (they have a
 * fixed size). Returns 0 or ENOMEM. */
int bp__sidx_length(const bp__index *ix, uint64_t first, uint64_t end, uint64_t *len);

/* A segment file opened for recovery. Only its header and trailer are read at
 * open; the footer is read with pread, and the whole file is mapped only when
 * its frames must be scanned. */
typedef struct bp__segfile {
  uint64_t id;
  int fd;                   /* -1 for an empty segment */
  size_t size;
  size_t frames_start;      /* offset of the first frame */
  bool has_trailer;         /* ends in "SIDX" */
  uint8_t trailer[BP__SIDX_TRAILER_SIZE];
  const uint8_t *data;      /* the file for a scan: mapped whole, or read into memory */
  bool mapped;
  bool incremental;         /* read as the scan goes (a read-only open: a writer may
                               shorten the file meanwhile, which a mapping would
                               answer with SIGBUS) */
  size_t base;              /* the file offset of data[0] (incremental: the window's start) */
  size_t have;              /* bytes of data that hold the file from base */
  size_t cap;
  size_t torn_header;       /* bytes of a header cut short (the segment is empty) */
  int64_t created_ns;       /* the header's */
} bp__segfile;
/* Opens segment id for recovery. A file too short to hold its header is
 * reported as empty (fd -1, size 0, torn_header its length) rather than an
 * error; bp__segment_load counts those bytes as torn.
 * Errors: BP_ECORRUPT (bad magic or version, with the segment id), BP_EIO. */
bp_status bp__segfile_open(bp_store *s, uint64_t id, bp__segfile *f);
void bp__segfile_close(bp__segfile *f);
/* Adds the segment's events to the index: from its SIDX footer when that is
 * present, sealed, consistent and from_offset is the first frame; else by
 * scanning frames from from_offset. may_tear says the segment is the newest
 * one holding frames: only there may a crash have left a torn tail, which is
 * dropped (counted in the store's diagnostics), as are interrupted batches.
 * A read-write open notes the footers to write (footer_fixes).
 * Errors: BP_ECORRUPT (damage in a sealed segment, or anywhere in a segment
 * that is not the newest, without cfg.salvage; the message names segment and
 * offset). */
bp_status bp__segment_load(bp_store *s, bp__segfile *f, uint64_t from_offset, bool may_tear, bool *used_sidx);
enum { BP__FIX_CRASHED = 1, BP__FIX_DAMAGED, BP__FIX_STALE };
/* Writes the footers recorded in footer_fixes: each after its segment's
 * frames, the file cut to its end, fsynced. Errors: BP_EIO when a crashed
 * segment cannot be finished (a store must not grow past an unsealed
 * segment); the other fixes only log a failure (loading never relies on
 * them, and the next open tries again). */
bp_status bp__segment_fix_footers(bp_store *s);
/* Takes the newest segment out of footer_fixes when it is there as one a
 * writer left unsealed (a close, or a crash) and no segment follows it: its
 * frames up to *frames_end (events from *first) are the log's end, which a
 * read-write open goes on with instead of sealing it. */
bool bp__segment_take_newest_fix(bp_store *s, uint64_t *id, uint64_t *first, uint64_t *frames_end);
/* Records a footer to write; false when out of memory. */
bool bp__segment_note_fix(bp_store *s, uint64_t id, uint64_t first, uint64_t count, uint64_t frames_end, int why);
/* Fills an index entry from a decoded frame found at (seg, off, len). */
void bp__entry_from_frame(bp__ientry *e, const bp__frame *fr, uint32_t entity, uint32_t scope, uint64_t seg,
                          uint64_t off, uint32_t len);
/* Adds one recovered entry to the index and the entity's chain head. */
bp_status bp__recover_entry(bp_store *s, bp__ientry *e);
/* Drops the entries from count on and clears their scan fields, so that
 * the index files are as they were before them (a refused write, a follow
 * that found damage). */
void bp__forget_from(bp_store *s, uint64_t count);
/* Publishes the writer's head record (wlock held): after a commit, a
 * compaction, a close. Nothing when the writer has no head file. */
void bp__writer_publish_head(bp_store *s);

/* Indexes the frames of segment id from offset from (0: its first frame):
 * exactly up to offset upto (a live writer's head), or with upto UINT64_MAX
 * as far as a writer finished it (to its SIDX footer when sealed, else to its
 * last whole frame outside a batch). The segment becomes readable up to
 * there. *end: where the indexed frames end; *created_ns: its header's time,
 * which must be expect_created unless that is 0 (else BP__ESTALE: another
 * file took the name, and nothing is read). Nothing is published. Errors:
 * BP_ECORRUPT (damage before upto or before a footer; the index is left as
 * it was), BP__ESTALE, BP_EIO, BP_ENOMEM. */
bp_status bp__segment_follow(bp_store *s, uint64_t id, uint64_t from, uint64_t upto, int64_t expect_created,
                             uint64_t *end, int64_t *created_ns);

/* ---- snapshots (snapshot.c) ---- */
/* bp_snapshot_with_progress for the view the handle has now. Errors: as
 * bp_snapshot, and BP__ESTALE (read-only handles). */
bp_status bp__snapshot(bp_store *s, const char *dest, bp_progress_fn fn, void *ctx);

/* ---- the head file (head.c) ---- */
/* The writer maps the head file (created if absent), publishes first and
 * then takes the lock that says it is live; a failure is logged and the store
 * goes on without it (followers then read the log to its end). */
bp_status bp__head_attach_writer(bp_store *s, const bp__head_rec *first);
/* Publishes r and wakes sleeping followers (the writer, wlock held). */
void bp__head_publish(bp__head *h, const bp__head_rec *r);
/* The writer lets go (close): followers see it is no longer live. */
void bp__head_detach(bp__head *h);
/* A follower maps the head file if it exists; false when it does not (yet). */
bool bp__head_attach_reader(bp_store *s);
/* The record; false when there is none (no file, or never written). */
bool bp__head_read(const bp__head *h, bp__head_rec *r);
/* The futex word as seen now, and a sleep until it moves from seen (or
 * timeout_ms passes; negative: no limit). */
uint32_t bp__head_wake_seen(const bp__head *h);
void bp__head_wait(bp__head *h, uint32_t seen, int timeout_ms);
/* Moves the futex word, waking every sleeper (a follower's own thread at close). */
void bp__head_nudge(bp__head *h);
void bp__head_free(bp__head *h);

/* ---- following (follow.c) ---- */
/* A subscription was made on a read-only handle: its thread starts. */
void bp__follow_start(bp_store *s);
/* Stops the thread and lets go of the head (bp_close). */
void bp__follow_stop(bp_store *s);

/* ---- checkpoint (checkpoint.c) ---- */
/* Writes index.ckpt atomically (temporary file, fsync, rename, directory fsync)
 * for the store as it is (nothing may append meanwhile). */
bp_status bp__checkpoint_write(bp_store *s);
/* The checkpoint in two steps, so that appends may go on while it is written:
 * the first events, and where the segments stood after them (wlock held),
 * then the write of those (any thread; one checkpoint write at a time). */
bp_status bp__checkpoint_watermark(bp_store *s, uint64_t *n, uint64_t *wm_seg, uint64_t *wm_off);
bp_status bp__checkpoint_write_at(bp_store *s, uint64_t n, uint64_t wm_seg, uint64_t wm_off);
/* Restores the index from index.ckpt. On success *wm_seg and *wm_off hold the
 * watermark. Any problem returns an error (the caller rebuilds instead). */
bp_status bp__checkpoint_load(bp_store *s, uint64_t *wm_seg, uint64_t *wm_off);
/* One entry of the checkpoint's entries array: the canonical layout in one
 * pass where it is that, else field by field (every valid encoding). The
 * general reader alone, for the fuzz target that checks that both agree. The
 * entity and scope are the checkpoint's string ids. Errors: BP_ESERIAL. */
bp_status bp__checkpoint_read_entry(bp__mp_reader *r, bp__ientry *e, uint64_t *seq);
bp_status bp__checkpoint_read_entry_general(bp__mp_reader *r, bp__ientry *e, uint64_t *seq);
/* Appends one entry as every writer lays it out. */
void bp__checkpoint_put_entry(bp__buf *b, const bp__ientry *e, uint64_t seq);

/* ---- recovery (recover.c) ---- */
/* Fills the store's empty index and segment table from its directory (see
 * recover.c). Errors: BP_ECORRUPT, BP_EIO, BP_ENOMEM. */
bp_status bp__recover(bp_store *s);

/* ---- open (store.c) ---- */
/* bp_open_readonly without the persistent index (index.ckpt, footers and
 * scans only): bp_verify's view of the checkpoint. */
bp_status bp__open_readonly_unindexed(const bp_config *cfg, bp_store **out);

/* ---- the persistent index (ixstore.c) ---- */
/* Loads index/ into the (empty) index after the segments were registered and
 * the log epoch set: on success events [0, n) are indexed and *wm_seg,
 * *wm_off say where in the log the rest begins. BP_ENOTFOUND: there is no
 * index, or it cannot be used (the reason logged; the caller resets the index
 * and builds it). BP_ECORRUPT: it proves that events it lists left the log
 * (not with salvage). BP_ENOMEM. */
bp_status bp__ixstore_load(bp_store *s, uint64_t *wm_seg, uint64_t *wm_off);
/* Sets s->tail_evidence from dir/index/state when a copy of it is whole and
 * made for this log (log_epoch known), whether or not the index is used. */
void bp__ixstore_evidence(bp_store *s);
/* Starts index/ afresh for a read-write store about to index its log.
 * Errors: BP_EIO, BP_ENOMEM. */
bp_status bp__ixstore_create(bp_store *s);
/* Publishes what was indexed and writes frozen gens as runs, in the calling
 * thread (recovery, before any other thread exists). Errors: BP_EIO, BP_ENOMEM. */
bp_status bp__ixstore_drain(bp_store *s);
/* Makes events [0, count) durable in index/state (ixstore's write_state,
 * for the end of a first build). */
bp_status bp__ixstore_persist(bp_store *s);
/* Starts the index thread. Errors: BP_EIO. */
bp_status bp__ixstore_start(bp_store *s);
/* Stops the index thread and writes what changed (close); a failure is only logged: the index is derived from the log. */
bp_status bp__ixstore_close(bp_store *s);
/* Stops the index thread and forgets index/ (a compaction renumbered the
 * log: the next open builds it again). */
void bp__ixstore_detach(bp_store *s);
/* Stops the index thread until bp__ixstore_start (a compaction). */
void bp__ixstore_pause(bp_store *s);
/* Stops the index thread, writing nothing (a failed open, the end of close). */
void bp__ixstore_detach_quietly(bp_store *s);

/* ---- writer (writer.c) ---- */
bp_status bp__writer_seal(bp_store *s);
/* At close: the active segment's frames made durable and the space
 * allocated ahead of them given back, the segment left unsealed for the next
 * read-write open to go on with (sealed instead when its rotation is due).
 * Writes nothing when nothing was appended. Errors: BP_EIO. */
bp_status bp__writer_finish(bp_store *s);
/* At a read-write open: makes segment id, unsealed, whose kept frames
 * (events [first, ix.count)) end at frames_end, the active segment again,
 * cut to frames_end first when the file is longer. Errors: BP_EIO. */
bp_status bp__writer_adopt(bp_store *s, uint64_t id, uint64_t first, uint64_t frames_end);
/* fsyncs the active segment; everything appended so far becomes durable (wlock held).
 * Errors: BP_EWRITER, BP_EIO (the writer's restart policy applies). */
bp_status bp__writer_sync(bp_store *s);
/* What the head file should say now: the log epoch, the published count,
 * where the last published frame ends, the durable count (wlock held). */
void bp__writer_head_record(bp_store *s, bp__head_rec *r);
void bp__writer_free(bp_store *s);

/* ---- compaction (compact.c) ---- */
/* Finishes or undoes a compaction that a crash interrupted. A read-only store
 * changes nothing: *hidden (malloc'd) lists the segments that open must skip,
 * and *skip_checkpoint says the checkpoint is stale. Errors: BP_EIO. */
bp_status bp__compact_recover(bp_store *s, uint64_t **hidden, size_t *nhidden, bool *skip_checkpoint);
/* A global sequence of generation `generation` in today's numbering (view_lock held). */
uint64_t bp__compact_translate(bp_store *s, uint64_t generation, uint64_t position);
static inline void bp__view_enter(bp_store *s) { pthread_rwlock_rdlock(&s->view_lock); }
static inline void bp__view_leave(bp_store *s) { pthread_rwlock_unlock(&s->view_lock); }

/* ---- subscriptions (sub.c) ---- */
/* bp_subscribe but for starting a read-only handle's follower (follow.c). */
bp_subscription *bp__subscribe(bp_store *s, const bp_region *r);
/* Hands events [from, to), just published, to matching subscriptions. */
void bp__notify(bp_store *s, uint64_t from, uint64_t to);
/* Ends every subscription (bp_close). */
void bp__subs_close(bp_store *s);

/* ---- reader (reader.c) ---- */
/* Reads event seq (visible) into rd->ev without allocating per event: the
 * event's strings are the interned names, its payload points into the segment
 * mapping or rd's scratch, valid until the next read with rd. Checks length,
 * CRC and id. Errors: BP_ECRC, BP_ECORRUPT, BP_EIO, BP_ENOMEM. */
typedef struct bp__evread {
  bp__buf frame, scratch;
  const uint8_t *raw;       /* the whole frame as stored (length in the index) */
  bp_event ev;
  /* The segment mapping looked up last (map NULL: not mapped). Mappings stay
   * where they are while a view is held and only grow (the active segment's
   * readable length), so an evread lives within one view. */
  uint64_t seg_id;
  const uint8_t *seg_map;
  size_t seg_len;
} bp__evread;
/* Ready to read: no buffers and no mapping looked up yet (ev and raw are
 * outputs). Cheaper than clearing the whole record, which bp_get would pay
 * on every call. */
static inline void bp__evread_init(bp__evread *rd) {
  rd->frame = (bp__buf){0};
  rd->scratch = (bp__buf){0};
  rd->raw = NULL;
  rd->seg_id = 0;
  rd->seg_map = NULL;
  rd->seg_len = 0;
}
bp_status bp__read_event(bp_store *s, uint64_t seq, bp__evread *rd);
/* Only the stored frame of event seq, length and CRC checked, into rd->raw
 * (no decoding). Errors: as bp__read_event. */
bp_status bp__read_frame(bp_store *s, uint64_t seq, bp__evread *rd);
void bp__evread_free(bp__evread *rd);
/* Readers that know which events come next (a projection's stream) start
 * loading them a few events ahead, so that the cache misses of several events
 * overlap instead of following one another: first the index entry, then,
 * once that has arrived, the frame (when its segment is mapped). Neither
 * reads anything itself; both only hint. */
void bp__prefetch_entry(const bp_store *s, uint64_t seq);
void bp__prefetch_frame(bp_store *s, uint64_t seq, bp__evread *rd);
/* How far ahead: frames this many events, entries twice as many (an entry
 * must have arrived before its frame can be found). */
#define BP__READ_AHEAD 4
void bp__entry_from_index(const bp_store *s, uint64_t seq, bp_entry *out);
/* Open stores in the process, for the recycled result array (reader.c):
 * the last close releases it. */
void bp__results_store_opened(void);
void bp__results_store_closed(void);

#endif
