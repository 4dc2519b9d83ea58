/*
 * follower.c - keeping a replica from a JetStream stream.
 *
 * The replica's own log says how far it got: each message names the event
 * before it in the stream (Batpak-Prev-Id), which must be the replica's last
 * event, so a gap is seen whatever the consumer's state. A message whose
 * event the replica holds already (redelivered after a crash between append
 * and acknowledgement, or republished into a reset stream) must repeat it
 * byte for byte and is skipped. Frames are appended a source batch at a
 * time (a batch's frames but its last carry BP_FLAG_BATCH_MEMBER), made
 * durable, and only then acknowledged (AckAll: one acknowledgement covers
 * every message before it).
 */
#include "replication/broker.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct bp_follower {
  bp_store *replica;
  bp__broker b;
  natsSubscription *sub;
  natsMsg **held;               /* fetched, checked, not yet appended (a batch's start) */
  size_t nheld, capheld;
  natsMsg *ack_point;           /* the last message handled but not yet acknowledged */
  bp_id last_id;                /* the replica's last event, or the last one held */
  bool has_last;
  bp_follower_stats stats;
  uint64_t start_seq;           /* where a consumer made again starts (0: the beginning) */
  bp_status fatal;
  bp_error fatal_err;
};

/* ------------------------------------------------------------ checks */

static bp_status refuse(bp_follower *f, uint64_t seq, natsMsg *m, const char *fmt, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
static bp_status refuse(bp_follower *f, uint64_t seq, natsMsg *m, const char *fmt, ...) {
  char why[200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  return bp_set_error(BP_EDIVERGED, "follower: stream %s message %" PRIu64 " (subject %.60s): %s; the replica "
                      "keeps what it had", f->b.opts.stream, seq, natsMsg_GetSubject(m), why);
}

/* Whether header key of m equals the escaped text[0..len). */
static bool header_is_token(natsMsg *m, const char *key, const char *text, size_t len) {
  const char *h = bp__header(m, key);
  if (!h) return false;
  size_t hl = strlen(h);
  char buf[512];
  char *tok = bp_nats_token_escape(text, len, NULL, 0) < sizeof buf ? buf : malloc(hl + 1);
  if (!tok) return false;
  size_t need = bp_nats_token_escape(text, len, tok, tok == buf ? sizeof buf : hl + 1);
  bool same = need == hl && memcmp(tok, h, hl) == 0;
  if (tok != buf) free(tok);
  return same;
}

/* New; in the replica already; or held already for this pump's append. */
typedef enum { MSG_NEW, MSG_HELD_ALREADY, MSG_PENDING_ALREADY } msg_kind;

/* Checks message m (stream sequence seq) against its frame, its subject and
 * the replica; *ev receives the decoded frame. */
static bp_status check_message(bp_follower *f, natsMsg *m, uint64_t seq, bp_event **ev, msg_kind *kind) {
  *ev = NULL;
  const char *id_hex = bp__header(m, BP__HDR_MSG_ID), *prev_hex = bp__header(m, BP__HDR_PREV_ID);
  if (!id_hex || !prev_hex || !bp__header(m, BP__HDR_ENTITY) || !bp__header(m, BP__HDR_SCOPE))
    return refuse(f, seq, m, "not a batpak event (no %s)", !id_hex ? "Nats-Msg-Id" : "Batpak-* headers");
  const void *data = natsMsg_GetData(m);
  int len = natsMsg_GetDataLength(m);
  bp_status st = bp_frame_decode(data, len > 0 ? (size_t)len : 0, ev);
  if (st) {
    bp_error err = *bp_last_error();
    return bp_set_error(st, "follower: stream %s message %" PRIu64 ": %s; the replica keeps what it had",
                        f->b.opts.stream, seq, err.message);
  }
  const bp_event *e = *ev;
  char id[33], hex[65], kind_hex[8];
  bp_id_to_hex(e->header.event_id, id);
  if (strcmp(id, id_hex) != 0) return refuse(f, seq, m, "its frame holds event %s, its Nats-Msg-Id says %s", id, id_hex);
  if (!header_is_token(m, BP__HDR_ENTITY, e->entity, strlen(e->entity)))
    return refuse(f, seq, m, "its frame's entity does not match Batpak-Entity");
  if (!header_is_token(m, BP__HDR_SCOPE, e->scope, strlen(e->scope)))
    return refuse(f, seq, m, "its frame's scope does not match Batpak-Scope");
  snprintf(kind_hex, sizeof kind_hex, "%04x", (unsigned)e->header.kind);
  const char *h = bp__header(m, BP__HDR_KIND);
  if (!h || strcmp(h, kind_hex) != 0) return refuse(f, seq, m, "its frame's kind %s does not match Batpak-Kind", kind_hex);
  if (e->has_hash_chain) {
    bp__hex(e->hash_chain.event_hash, 32, hex);
    h = bp__header(m, BP__HDR_EVENT_HASH);
    if (!h || strcmp(h, hex) != 0) return refuse(f, seq, m, "its frame's event hash does not match Batpak-Event-Hash");
    bp__hex(e->hash_chain.prev_hash, 32, hex);
    h = bp__header(m, BP__HDR_PREV_HASH);
    if (!h || strcmp(h, hex) != 0) return refuse(f, seq, m, "its frame's prev_hash does not match Batpak-Prev-Hash");
  }
  /* The subject is the prefix, then the scope's and the entity's tokens. */
  const char *subj = natsMsg_GetSubject(m);
  size_t pl = strlen(f->b.opts.prefix);
  const char *sc = bp__header(m, BP__HDR_SCOPE), *en = bp__header(m, BP__HDR_ENTITY);
  size_t sl = strlen(sc), el = strlen(en);
  bool subject_ok = strlen(subj) == pl + 1 + sl + 1 + el && memcmp(subj, f->b.opts.prefix, pl) == 0 &&
                    subj[pl] == '.' && memcmp(subj + pl + 1, sc, sl) == 0 && subj[pl + 1 + sl] == '.' &&
                    memcmp(subj + pl + 2 + sl, en, el) == 0;
  if (!subject_ok) return refuse(f, seq, m, "its subject does not name its frame's scope and entity");

  /* Held already? Then byte for byte. */
  void *mine;
  size_t mine_len;
  st = bp_get_frame(f->replica, e->header.event_id, &mine, &mine_len);
  if (st == BP_OK) {
    bool same = mine_len == (size_t)len && memcmp(mine, data, mine_len) == 0;
    bp_free(mine);
    if (!same) return refuse(f, seq, m, "the replica holds event %s with other bytes", id);
    if (f->nheld) return refuse(f, seq, m, "it repeats event %s, held already, after events the replica lacks", id);
    *kind = MSG_HELD_ALREADY;
    return BP_OK;
  }
  if (st != BP_ENOTFOUND) return st;
  /* Or held, not yet appended: the same again is skipped, another is not. */
  for (size_t k = 0; k < f->nheld; k++) {
    const char *held_id = bp__header(f->held[k], BP__HDR_MSG_ID);
    if (!held_id || strcmp(held_id, id_hex) != 0) continue;
    bool same = natsMsg_GetDataLength(f->held[k]) == len && memcmp(natsMsg_GetData(f->held[k]), data, (size_t)len) == 0;
    if (!same) return refuse(f, seq, m, "the replica holds event %s with other bytes", id);
    *kind = MSG_PENDING_ALREADY;
    return BP_OK;
  }
  /* New: it must follow the last event. */
  char want[33];
  if (f->has_last) bp_id_to_hex(f->last_id, want);
  else snprintf(want, sizeof want, "%s", BP__NO_PREV);
  if (strcmp(prev_hex, want) != 0)
    return refuse(f, seq, m, "a gap: it follows event %s, the replica's last event is %s", prev_hex, want);
  *kind = MSG_NEW;
  return BP_OK;
}

/* ------------------------------------------------------------ applying */

static uint64_t meta_seq(natsMsg *m) {
  jsMsgMetaData *meta = NULL;
  uint64_t seq = 0;
  if (natsMsg_GetMetaData(&meta, m) == NATS_OK) {
    seq = meta->Sequence.Stream;
    jsMsgMetaData_Destroy(meta);
  }
  return seq;
}

/* Appends held[0..n), makes them durable, and moves the ack point. */
static bp_status apply_held(bp_follower *f, size_t n, uint64_t *applied) {
  if (n == 0) return BP_OK;
  bp_frame_in *in = calloc(n, sizeof *in);
  if (!in) return bp_set_error(BP_ENOMEM, "follower: out of memory");
  for (size_t i = 0; i < n; i++) {
    int len = natsMsg_GetDataLength(f->held[i]);
    in[i].data = natsMsg_GetData(f->held[i]);
    in[i].len = len > 0 ? (size_t)len : 0;
  }
  bp_status st = bp_append_frames(f->replica, in, n, NULL);
  free(in);
  if (!st) st = bp_sync(f->replica);
  if (st) return st;
  *applied += n;
  f->stats.applied += n;
  if (f->ack_point) natsMsg_Destroy(f->ack_point);
  f->ack_point = f->held[n - 1];
  for (size_t i = 0; i + 1 < n; i++) natsMsg_Destroy(f->held[i]);
  memmove(f->held, f->held + n, (f->nheld - n) * sizeof *f->held);
  f->nheld -= n;
  return BP_OK;
}

static bp_status hold(bp_follower *f, natsMsg *m) {
  if (f->nheld == f->capheld) {
    size_t cap = f->capheld ? f->capheld * 2 : 256;
    natsMsg **p = realloc(f->held, cap * sizeof *p);
    if (!p) return bp_set_error(BP_ENOMEM, "follower: out of memory");
    f->held = p;
    f->capheld = cap;
  }
  f->held[f->nheld++] = m;
  return BP_OK;
}

/* Acknowledges everything up to the ack point (AckAll), waiting for the
 * broker to confirm. */
static void acknowledge(bp_follower *f) {
  if (!f->ack_point) return;
  jsErrCode jerr = 0;
  natsStatus s = natsMsg_AckSync(f->ack_point, NULL, &jerr);
  if (s != NATS_OK)
    bp__broker_log(&f->b, BP_LOG_WARN, "follower: acknowledgement not confirmed (%s): those messages come again "
                   "and are skipped as held", natsStatus_GetText(s));
  natsMsg_Destroy(f->ack_point);
  f->ack_point = NULL;
}

/* BP_ENOTFOUND when the stream or the consumer is gone (final), else BP_OK. */
static bp_status gone(bp_follower *f) {
  jsStreamInfo *si = NULL;
  jsErrCode e2 = 0;
  natsStatus s2 = js_GetStreamInfo(&si, f->b.js, f->b.opts.stream, NULL, &e2);
  jsStreamInfo_Destroy(si);
  if (s2 != NATS_OK && e2 == JSStreamNotFoundErr)
    return bp_set_error(BP_ENOTFOUND, "follower: stream %s no longer exists (deleted under the follower); the replica "
                        "keeps what it had", f->b.opts.stream);
  jsConsumerInfo *ci = NULL;
  s2 = js_GetConsumerInfo(&ci, f->b.js, f->b.opts.stream, f->b.opts.durable, NULL, &e2);
  jsConsumerInfo_Destroy(ci);
  if (s2 != NATS_OK && e2 == JSConsumerNotFoundErr)
    return bp_set_error(BP_ENOTFOUND, "follower: consumer %s of stream %s no longer exists (the stream was reset or "
                        "the consumer deleted); open the follower again to start a new one",
                        f->b.opts.durable, f->b.opts.stream);
  return BP_OK;
}

/* Checks and holds the messages of list (taking them from it); *complete
 * becomes the number of held messages that end with a whole source batch. */
static bp_status take(bp_follower *f, natsMsgList *list, size_t *complete) {
  bp_status st = BP_OK;
  for (int i = 0; i < list->Count && !st; i++) {
    natsMsg *m = list->Msgs[i];
    uint64_t seq = meta_seq(m);
    if (f->nheld && seq <= f->stats.stream_sequence) continue; /* a redelivery of a held message */
    bp_event *ev = NULL;
    msg_kind kind = MSG_NEW;
    st = check_message(f, m, seq, &ev, &kind);
    bool member = ev && (ev->header.flags & BP_FLAG_BATCH_MEMBER);
    bp_id id = ev ? ev->header.event_id : (bp_id){0, 0};
    bp_event_free(ev);
    if (st) break;
    f->stats.stream_sequence = seq;
    if (kind == MSG_PENDING_ALREADY) { /* acknowledged with the held one, once appended */
      f->stats.duplicates++;
      continue;
    }
    list->Msgs[i] = NULL; /* ours now */
    if (kind == MSG_HELD_ALREADY) {
      f->stats.duplicates++;
      if (f->ack_point) natsMsg_Destroy(f->ack_point);
      f->ack_point = m;
      continue;
    }
    if ((st = hold(f, m))) {
      natsMsg_Destroy(m);
      break;
    }
    f->last_id = id;
    f->has_last = true;
    if (!member) *complete = f->nheld;
  }
  natsMsgList_Destroy(list);
  return st;
}

/* Up to batch messages: those there now, or (nothing there) the first to
 * come within wait_ms. nats.c's simple fetch does exactly that: a request
 * that does not wait, then, when it brought nothing, one that does. */
static natsStatus fetch(bp_follower *f, int batch, int wait_ms, natsMsgList *list, jsErrCode *jerr) {
  memset(list, 0, sizeof *list);
  natsStatus s = natsSubscription_Fetch(list, f->sub, batch, wait_ms <= 0 ? 1 : wait_ms, jerr);
  if (s == NATS_NOT_FOUND || (s == NATS_OK && list->Count == 0)) {
    natsMsgList_Destroy(list);
    s = NATS_TIMEOUT;
  }
  return s;
}

bp_status bp_follower_pump(bp_follower *f, int timeout_ms, uint64_t *applied) {
  uint64_t done = 0;
  if (applied) *applied = 0;
  if (!f) return bp_set_error(BP_EINVAL, "bp_follower_pump: NULL follower");
  if (f->fatal) {
    bp_set_error(f->fatal, "%s", f->fatal_err.message);
    return f->fatal;
  }
  bp_status st = BP_OK;
  size_t complete = 0, fetched = 0, batch = f->b.opts.o.fetch_batch;
  int wait = timeout_ms;
  while (!st && fetched < batch) {
    natsMsgList list;
    jsErrCode jerr = 0;
    natsStatus s = fetch(f, (int)(batch - fetched), wait, &list, &jerr);
    wait = 0; /* having waited once, take what follows without waiting */
    if (s == NATS_TIMEOUT && fetched > 0) break;
    if (s != NATS_OK) {
      /* A pull from a consumer that was deleted (with its stream, say) may
       * just time out: a fetch that brought nothing asks whether both are
       * still there. */
      st = gone(f);
      if (!st && s != NATS_TIMEOUT) st = bp__broker_fail(&f->b, s, jerr, "follower: fetch");
      if (st == BP_ENOTFOUND) {
        f->fatal = st;
        f->fatal_err = *bp_last_error();
      }
      if (!fetched) return st;
      break;
    }
    fetched += (size_t)list.Count;
    st = take(f, &list, &complete);
  }
  /* One append, one fsync and one acknowledgement for the whole pump (up
   * to its last whole batch), also when a later message failed: what came
   * before the failing message is kept, nothing after it. */
  bp_error err = *bp_last_error();
  bp_status ast = apply_held(f, complete, &done);
  if (ast && !st) {
    st = ast;
    err = *bp_last_error();
  }
  if (st && st != BP_EBROKER) {
    for (size_t k = 0; k < f->nheld; k++) natsMsg_Destroy(f->held[k]);
    f->nheld = 0;
    acknowledge(f);
    f->fatal = st;
    f->fatal_err = err;
    bp_set_error(st, "%s", err.message);
  } else {
    acknowledge(f);
    if (st) bp_set_error(st, "%s", err.message);
  }
  if (applied) *applied = done;
  return st;
}

/* ------------------------------------------------------------ open, close */

void bp_follower_get_stats(bp_follower *f, bp_follower_stats *out) {
  if (!out) return;
  memset(out, 0, sizeof *out);
  if (!f) return;
  *out = f->stats;
  jsConsumerInfo *ci = NULL;
  jsErrCode jerr = 0;
  if (natsSubscription_GetConsumerInfo(&ci, f->sub, NULL, &jerr) == NATS_OK) {
    out->pending = ci->NumPending + (uint64_t)ci->NumAckPending;
    jsConsumerInfo_Destroy(ci);
  }
}

void bp_follower_close(bp_follower *f) {
  if (!f) return;
  for (size_t k = 0; k < f->nheld; k++) natsMsg_Destroy(f->held[k]);
  free(f->held);
  if (f->ack_point) natsMsg_Destroy(f->ack_point);
  /* Destroy alone: unsubscribing would delete a consumer this follower
   * created, and with it the place a restarted follower resumes from. */
  if (f->sub) natsSubscription_Destroy(f->sub);
  bp__broker_close(&f->b);
  bp__broker_opts_free(&f->b.opts);
  free(f);
}

/* The replica's last event in global order. */
static bp_status replica_last(bp_follower *f) {
  bp_store_stats stats;
  bp_stats(f->replica, &stats);
  f->has_last = false;
  if (stats.event_count == 0) return BP_OK;
  bp_region all = bp_region_all();
  bp_cursor *c = bp_cursor_open(f->replica, &all);
  if (!c) return bp_last_error()->code;
  bp_cursor_seek(c, stats.global_sequence - 1);
  bp_entry e;
  bp_status st = bp_cursor_poll(c, &e);
  if (!st) {
    f->last_id = e.event_id;
    f->has_last = true;
  }
  bp_cursor_close(c);
  return st;
}

/* A consumer left by an earlier follower may have delivered messages it
 * never acknowledged (a source batch held whole, then a crash): they would
 * come again only after the acknowledgement wait, behind newer ones. So a
 * consumer whose deliveries ran ahead of its acknowledgements is made again
 * from its acknowledged floor: the follower then sees the stream in order
 * from the first message it has not confirmed. */
static bp_status rewind_consumer(bp_follower *f) {
  jsConsumerInfo *ci = NULL;
  jsErrCode jerr = 0;
  natsStatus s = js_GetConsumerInfo(&ci, f->b.js, f->b.opts.stream, f->b.opts.durable, NULL, &jerr);
  if (s != NATS_OK) return jerr == JSConsumerNotFoundErr ? BP_OK : bp__broker_fail(&f->b, s, jerr, "follower: consumer info");
  uint64_t floor = ci->AckFloor.Stream, delivered = ci->Delivered.Stream;
  jsConsumerInfo_Destroy(ci);
  if (delivered == floor) return BP_OK; /* bound as it is */
  f->start_seq = floor + 1;
  s = js_DeleteConsumer(f->b.js, f->b.opts.stream, f->b.opts.durable, NULL, &jerr);
  if (s != NATS_OK && jerr != JSConsumerNotFoundErr)
    return bp__broker_fail(&f->b, s, jerr, "follower: make the consumer again from its acknowledged floor");
  bp__broker_log(&f->b, BP_LOG_INFO, "follower: consumer %s made again from stream sequence %" PRIu64,
                 f->b.opts.durable, floor + 1);
  return BP_OK;
}

bp_status bp_follower_open(bp_store *replica, const bp_nats_options *opts, bp_follower **out) {
  if (out) *out = NULL;
  if (!replica || !out) return bp_set_error(BP_EINVAL, "bp_follower_open: NULL argument");
  bp_store_diagnostics d;
  bp_diagnostics(replica, &d);
  if (d.read_only) return bp_set_error(BP_EREADONLY, "follower: the replica must be opened read-write");
  bp_follower *f = calloc(1, sizeof *f);
  if (!f) return bp_set_error(BP_ENOMEM, "follower: out of memory");
  f->replica = replica;
  bp_status st = bp__broker_opts_copy(opts, "batpak-follower", &f->b.opts);
  if (!st) st = replica_last(f);
  if (!st) st = bp__broker_connect(&f->b, "batpak-follower", NULL, NULL);
  if (!st) {
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, f->b.js, f->b.opts.stream, NULL, &jerr);
    jsStreamInfo_Destroy(si);
    if (s != NATS_OK) st = bp__broker_fail(&f->b, s, jerr, "follower: find the stream");
  }
  if (!st) st = rewind_consumer(f);
  if (!st) {
    char filter[200];
    snprintf(filter, sizeof filter, "%s.>", f->b.opts.prefix);
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = f->b.opts.stream;
    so.Config.Durable = f->b.opts.durable;
    so.Config.AckPolicy = js_AckAll;
    so.Config.DeliverPolicy = f->start_seq > 1 ? js_DeliverByStartSequence : js_DeliverAll;
    so.Config.OptStartSeq = f->start_seq > 1 ? f->start_seq : 0;
    so.Config.AckWait = (int64_t)30 * 1000000000;
    so.Config.MaxAckPending = 1 << 20;
    so.Config.FilterSubject = filter;
    jsErrCode jerr = 0;
    natsStatus s = js_PullSubscribe(&f->sub, f->b.js, filter, f->b.opts.durable, NULL, &so, &jerr);
    if (s != NATS_OK) st = bp__broker_fail(&f->b, s, jerr, "follower: create or bind the durable consumer");
  }
  if (st) {
    bp_error err = *bp_last_error();
    bp_follower_close(f);
    bp_set_error(err.code, "%s", err.message);
    return st;
  }
  *out = f;
  return BP_OK;
}
