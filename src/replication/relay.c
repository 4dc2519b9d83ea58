/*
 * relay.c - publishing a store's events to a JetStream stream.
 *
 * Where to resume is read from the stream itself: its last message carries
 * the last event it holds, so the relay starts right after that event in the
 * store. The durable cursor, committed after each acknowledged window, is
 * the relay's record of progress in the store (what its lag is counted
 * from, kept across retention like any durable cursor); the stream has the
 * last word. Publishes are asynchronous, in windows of max_pending, each
 * message with
 *   - Nats-Msg-Id: the event id, which JetStream drops as a duplicate inside
 *     its window (a publish whose acknowledgement was lost, sent again);
 *   - Nats-Expected-Last-Sequence: the stream sequence the previous message
 *     must have got, so that the stream takes the window in order, with no
 *     gap, or not at all from the first failure on; and so that a second
 *     primary publishing into the same stream makes this one's next publish
 *     fail (fencing).
 * After any failure the relay finds its place again from the stream's last
 * message: an event of this store means carry on after it; anything else
 * means another publisher took over the stream (BP_EFENCED).
 */
#include "replication/broker.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct bp_relay {
  bp_store *store;
  bp_region region;
  char *region_prefix, *region_scope;
  bp_cursor *cursor;
  bp_subscription *wake;        /* a doorbell: new events in the region */
  bp__broker b;
  uint64_t stream_last;         /* the stream's last sequence, holding last_id */
  bp_id last_id;                /* the event of the stream's last message (Batpak-Prev-Id of the next) */
  bool has_last;
  int64_t backoff_ms;           /* the wait before the next window after one failed */
  bool lost;                    /* a window failed: the cursor is past what the stream holds
                                 * until locate puts it back */
  bp_relay_stats stats;
  bp_status fatal;              /* once fenced, every pump says so */
  bp_error fatal_err;
  /* The window in flight, counted by nats.c's thread (ack_handler). */
  pthread_mutex_t lock;
  uint64_t acks, dups, fails;
  natsStatus first_status;
  char first_text[160];
  char *subject;                /* scratch for one subject */
  size_t subject_cap;
};

static void ack_handler(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure) {
  (void)js;
  bp_relay *r = closure;
  pthread_mutex_lock(&r->lock);
  if (pa && !pa->Duplicate) {
    r->acks++;
  } else if (pa) {
    r->dups++;
  } else {
    if (r->fails++ == 0 && pae) {
      r->first_status = pae->Err;
      snprintf(r->first_text, sizeof r->first_text, "%s", pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err));
    }
  }
  pthread_mutex_unlock(&r->lock);
  natsMsg_Destroy(msg);
}

/* ------------------------------------------------------------ the stream */

static bp_status create_stream(bp_relay *r) {
  char subject[200];
  snprintf(subject, sizeof subject, "%s.>", r->b.opts.prefix);
  const char *subjects[] = {subject};
  jsStreamConfig sc;
  jsStreamConfig_Init(&sc);
  sc.Name = r->b.opts.stream;
  sc.Subjects = subjects;
  sc.SubjectsLen = 1;
  sc.Storage = js_FileStorage;
  sc.Replicas = r->b.opts.o.replicas;
  sc.Duplicates = (int64_t)r->b.opts.o.duplicate_window_ms * 1000000;
  jsStreamInfo *si = NULL;
  jsErrCode jerr = 0;
  natsStatus s = js_AddStream(&si, r->b.js, &sc, NULL, &jerr);
  jsStreamInfo_Destroy(si);
  if (s != NATS_OK && jerr == JSStreamSubjectOverlapErr)
    return bp_set_error(BP_ECONFIG, "relay: stream %s cannot be created: its subjects %s overlap another stream's "
                        "(choose another subject prefix)", r->b.opts.stream, subject);
  if (s != NATS_OK && jerr != JSStreamNameExistErr) return bp__broker_fail(&r->b, s, jerr, "relay: create the stream");
  bp__broker_log(&r->b, BP_LOG_INFO, "relay: created stream %s (subjects %s, %" PRIu32 " replicas)", r->b.opts.stream,
                 subject, r->b.opts.o.replicas);
  return BP_OK;
}

static bool takes_prefix(const jsStreamConfig *c, const char *prefix) {
  char want[200];
  snprintf(want, sizeof want, "%s.>", prefix);
  for (int i = 0; c && i < c->SubjectsLen; i++)
    if (strcmp(c->Subjects[i], want) == 0 || strcmp(c->Subjects[i], ">") == 0) return true;
  return false;
}

/* Where to go on, from the stream's state. BP_EBROKER is worth retrying. */
static bp_status locate(bp_relay *r) {
  jsStreamInfo *si = NULL;
  jsErrCode jerr = 0;
  natsStatus s = js_GetStreamInfo(&si, r->b.js, r->b.opts.stream, NULL, &jerr);
  if (s != NATS_OK && jerr == JSStreamNotFoundErr) {
    bp_status st = create_stream(r);
    if (st) return st;
    r->stream_last = 0;
    r->has_last = false;
    bp_cursor_seek(r->cursor, 0);
    return BP_OK;
  }
  if (s != NATS_OK) {
    bp_status st = bp__broker_fail(&r->b, s, jerr, "relay: stream info");
    return st == BP_ENOTFOUND ? BP_EBROKER : st;
  }
  bool ours = takes_prefix(si->Config, r->b.opts.prefix);
  uint64_t last = si->State.LastSeq, msgs = si->State.Msgs;
  jsStreamInfo_Destroy(si);
  if (!ours)
    return bp_set_error(BP_ECONFIG, "relay: stream %s does not take subjects %s.> (choose another stream or "
                        "subject prefix)", r->b.opts.stream, r->b.opts.prefix);
  if (last == 0) { /* never held a message: from the region's start */
    r->stream_last = 0;
    r->has_last = false;
    bp_cursor_seek(r->cursor, 0);
    return BP_OK;
  }
  if (msgs == 0) {
    /* No message but a last sequence: purged, or a broker answering that
     * has not caught up. Either way the stream does not say what it holds,
     * and nothing is published until it does (a purged stream is deleted to
     * be relayed again from the start). */
    return bp_set_error(BP_EBROKER, "relay: stream %s reports no message but a last sequence of %" PRIu64
                        " (purged? delete it to relay from the start)", r->b.opts.stream, last);
  }
  natsMsg *m = NULL;
  s = js_GetMsg(&m, r->b.js, r->b.opts.stream, last, NULL, &jerr);
  if (s != NATS_OK) {
    bp_status st = bp__broker_fail(&r->b, s, jerr, "relay: read the stream's last message");
    return st == BP_ENOTFOUND ? BP_EBROKER : st;
  }
  const char *id_hex = bp__header(m, BP__HDR_MSG_ID);
  bool batpak = id_hex && bp__header(m, BP__HDR_PREV_ID);
  bp_id id;
  bp_entry e;
  bool held = batpak && bp_id_from_hex(id_hex, &id) == BP_OK && bp_get_entry(r->store, id, &e) == BP_OK;
  bp_status st = BP_OK;
  if (!held) {
    st = bp_set_error(BP_EFENCED, "relay: stream %s's last message (sequence %" PRIu64 ", subject %.80s) %s%s%s: "
                      "another primary (or another publisher) writes into the stream; this relay stops",
                      r->b.opts.stream, last, natsMsg_GetSubject(m),
                      batpak ? "carries event " : "is not a batpak event", batpak ? id_hex : "",
                      batpak ? ", which this store does not hold" : "");
  } else {
    r->stream_last = last;
    r->last_id = id;
    r->has_last = true;
    bp_cursor_seek(r->cursor, e.global_sequence + 1);
  }
  natsMsg_Destroy(m);
  return st;
}

static void sleep_ms(int64_t ms) {
  if (ms > 0) nats_Sleep(ms);
}

/* locate, retried with doubling waits until deadline_ms (< 0: for ever)
 * while the broker is the trouble. Until it succeeds the relay is lost:
 * nothing is published from a position the stream has not confirmed. */
static bp_status resync(bp_relay *r, int64_t deadline_ms) {
  int64_t wait = 100;
  r->lost = true;
  for (;;) {
    bp_status st = locate(r);
    if (st != BP_EBROKER) {
      if (!st) {
        r->stats.resumes++;
        r->lost = false;
      }
      return st;
    }
    int64_t now = bp__mono_ms();
    if (deadline_ms >= 0 && now >= deadline_ms) return st;
    bp__broker_log(&r->b, BP_LOG_WARN, "%s; trying again in %" PRId64 " ms", bp_last_error()->message, wait);
    sleep_ms(deadline_ms >= 0 && deadline_ms - now < wait ? deadline_ms - now : wait);
    wait = wait * 2 > 2000 ? 2000 : wait * 2;
  }
}

/* ------------------------------------------------------------ messages */

static bp_status set_subject(bp_relay *r, const bp_entry *e) {
  size_t need = strlen(r->b.opts.prefix) + 2 + bp_nats_token_escape(e->scope, strlen(e->scope), NULL, 0) +
                bp_nats_token_escape(e->entity, strlen(e->entity), NULL, 0) + 1;
  if (need > r->subject_cap) {
    char *p = realloc(r->subject, need);
    if (!p) return bp_set_error(BP_ENOMEM, "relay: out of memory for a subject");
    r->subject = p;
    r->subject_cap = need;
  }
  size_t n = (size_t)snprintf(r->subject, need, "%s.", r->b.opts.prefix);
  n += bp_nats_token_escape(e->scope, strlen(e->scope), r->subject + n, need - n);
  r->subject[n++] = '.';
  bp_nats_token_escape(e->entity, strlen(e->entity), r->subject + n, need - n);
  return BP_OK;
}

/* The message carrying entry e: its frame as the body, the headers of
 * docs/REPLICATION.md. */
static bp_status build_message(bp_relay *r, const bp_entry *e, const bp_id *prev, natsMsg **out) {
  void *frame;
  size_t len;
  bp_status st = bp_get_frame(r->store, e->event_id, &frame, &len);
  if (st) return st;
  if ((st = set_subject(r, e))) {
    bp_free(frame);
    return st;
  }
  natsMsg *m = NULL;
  natsStatus s = natsMsg_Create(&m, r->subject, NULL, frame, (int)len);
  bp_free(frame);
  char id[33], prev_id[33], kind[8], seq[24], ph[65], eh[65];
  bp_id_to_hex(e->event_id, id);
  if (prev) bp_id_to_hex(*prev, prev_id);
  else snprintf(prev_id, sizeof prev_id, "%s", BP__NO_PREV);
  snprintf(kind, sizeof kind, "%04x", (unsigned)e->kind);
  snprintf(seq, sizeof seq, "%" PRIu64, e->global_sequence);
  bp__hex(e->hash_chain.prev_hash, 32, ph);
  bp__hex(e->hash_chain.event_hash, 32, eh);
  /* Coordinates in headers are escaped as in subjects: header values may
   * not hold line breaks, and the follower compares them with the frame's. */
  const char *dot = strchr(r->subject + strlen(r->b.opts.prefix) + 1, '.');
  size_t scope_len = (size_t)(dot - (r->subject + strlen(r->b.opts.prefix) + 1));
  char *scope_tok = strndup(r->subject + strlen(r->b.opts.prefix) + 1, scope_len);
  if (!scope_tok && s == NATS_OK) s = NATS_NO_MEMORY;
  if (s == NATS_OK) s = natsMsgHeader_Set(m, BP__HDR_MSG_ID, id);
  if (s == NATS_OK) s = natsMsgHeader_Set(m, BP__HDR_PREV_ID, prev_id);
  if (s == NATS_OK) s = natsMsgHeader_Set(m, BP__HDR_SCOPE, scope_tok);
  if (s == NATS_OK) s = natsMsgHeader_Set(m, BP__HDR_ENTITY, dot + 1);
  if (s == NATS_OK) s = natsMsgHeader_Set(m, BP__HDR_KIND, kind);
  if (s == NATS_OK) s = natsMsgHeader_Set(m, BP__HDR_SEQUENCE, seq);
  if (s == NATS_OK) s = natsMsgHeader_Set(m, BP__HDR_PREV_HASH, ph);
  if (s == NATS_OK) s = natsMsgHeader_Set(m, BP__HDR_EVENT_HASH, eh);
  free(scope_tok);
  if (s != NATS_OK) {
    natsMsg_Destroy(m);
    return bp_set_error(BP_ENOMEM, "relay: building a message: %s", natsStatus_GetText(s));
  }
  *out = m;
  return BP_OK;
}

/* ------------------------------------------------------------ the window */

/* Publishes entries e[0..n) and waits for their acknowledgements. Returns
 * how many the stream took in order (all n, or fewer after a failure, when
 * the caller must locate again); *st is set for failures that end the relay. */
static size_t publish_window(bp_relay *r, const bp_entries *es, bp_status *st) {
  pthread_mutex_lock(&r->lock);
  r->acks = r->dups = r->fails = 0;
  r->first_status = NATS_OK;
  r->first_text[0] = '\0';
  pthread_mutex_unlock(&r->lock);
  *st = BP_OK;
  natsStatus send_err = NATS_OK;
  for (size_t i = 0; i < es->len; i++) {
    const bp_entry *e = &es->items[i];
    natsMsg *m;
    const bp_id *prev = i > 0 ? &es->items[i - 1].event_id : r->has_last ? &r->last_id : NULL;
    if ((*st = build_message(r, e, prev, &m))) break;
    /* Set here rather than through jsPubOptions.ExpectLastSeq, where 0
     * means "no expectation": a stream's first message expects an empty
     * stream. No per-message wait either (nats.c would keep a timer entry
     * for each): the window's wait below bounds them all. */
    char expect[24];
    snprintf(expect, sizeof expect, "%" PRIu64, r->stream_last + i);
    natsStatus s = natsMsgHeader_Set(m, "Nats-Expected-Last-Sequence", expect);
    if (s == NATS_OK) s = js_PublishMsgAsync(r->b.js, &m, NULL);
    if (s != NATS_OK) {
      natsMsg_Destroy(m);
      send_err = s;
      break;
    }
  }
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MaxWait = r->b.opts.o.ack_wait_ms;
  natsStatus s = js_PublishAsyncComplete(r->b.js, &po);
  if (s != NATS_OK) {
    /* Acknowledgements that did not come are failures: stop waiting for them. */
    natsMsgList pending = {0};
    if (js_PublishAsyncGetPendingList(&pending, r->b.js) == NATS_OK) natsMsgList_Destroy(&pending);
  }
  pthread_mutex_lock(&r->lock);
  uint64_t acks = r->acks, dups = r->dups, fails = r->fails;
  natsStatus first_status = r->first_status;
  char text[160];
  snprintf(text, sizeof text, "%s", r->first_text);
  pthread_mutex_unlock(&r->lock);
  if (*st) return 0;
  if (acks == es->len) return es->len;
  /* Which failure it was decides what comes next. */
  if (first_status == NATS_MAX_PAYLOAD || strstr(text, "maximum payload") || strstr(text, "exceeds maximum")) {
    *st = bp_set_error(BP_ELIMIT, "relay: an event is larger than the broker's max_payload (%s)", text);
  } else if (fails || dups || send_err != NATS_OK || s != NATS_OK) {
    bp__broker_log(&r->b, BP_LOG_WARN, "relay: %" PRIu64 " of %zu publishes acknowledged (%" PRIu64 " failed, %" PRIu64
                   " duplicates%s%s%s%s): finding the stream's last message", acks, es->len, fails, dups,
                   text[0] ? "; first: " : "", text, send_err != NATS_OK ? "; publish: " : "",
                   send_err != NATS_OK ? natsStatus_GetText(send_err) : "");
  }
  return 0; /* the caller locates: how far the stream got is its to say */
}

static uint64_t wall_now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

bp_status bp_relay_pump(bp_relay *r, int timeout_ms, uint64_t *published) {
  if (published) *published = 0;
  if (!r) return bp_set_error(BP_EINVAL, "bp_relay_pump: NULL relay");
  if (r->fatal) {
    bp_set_error(r->fatal, "%s", r->fatal_err.message);
    return r->fatal;
  }
  int64_t deadline = timeout_ms < 0 ? -1 : bp__mono_ms() + timeout_ms;
  uint64_t total = 0;
  bool waited = false;
  for (;;) {
    if (r->lost) { /* an earlier failure left the position unconfirmed */
      bp_status st = resync(r, deadline);
      if (st) return st;
    }
    bp_entries es;
    bp_status st = bp_cursor_poll_batch(r->cursor, r->b.opts.o.max_pending, &es);
    if (st) return st;
    if (es.len == 0) {
      bp_entries_free(&es);
      if (total > 0 || waited) break;
      int64_t left = deadline < 0 ? -1 : deadline - bp__mono_ms();
      if (deadline >= 0 && left <= 0) break;
      bp_notification n;
      bp_status ws = bp_sub_recv(r->wake, &n, left > INT32_MAX ? INT32_MAX : (int)left);
      while (ws == BP_OK && bp_sub_recv(r->wake, &n, 0) == BP_OK) {
      }
      if (ws == BP_ECLOSED) return bp_set_error(BP_ECLOSED, "relay: the store was closed");
      waited = true;
      continue;
    }
    size_t took = publish_window(r, &es, &st);
    if (took == es.len) {
      r->backoff_ms = 50;
      r->stream_last += took;
      r->last_id = es.items[es.len - 1].event_id;
      r->has_last = true;
      total += took;
      r->stats.published += took;
      bp_entries_free(&es);
      st = bp_cursor_commit(r->cursor);
      if (st) return st;
      continue;
    }
    bp_entries_free(&es);
    r->lost = true;
    /* A stream that is not taking messages (its leader being elected, a
     * broker gone) is given time before the next window: publishing again
     * at once only loads the brokers that are electing. */
    if (!st) {
      int64_t now = bp__mono_ms();
      if (deadline >= 0 && now >= deadline) return bp_set_error(BP_EBROKER, "relay: stream %s took no message "
                                                               "before the timeout", r->b.opts.stream);
      sleep_ms(deadline >= 0 && deadline - now < r->backoff_ms ? deadline - now : r->backoff_ms);
      r->backoff_ms = r->backoff_ms * 2 > 2000 ? 2000 : r->backoff_ms * 2;
      st = resync(r, deadline);
    }
    if (st == BP_EFENCED || st == BP_ELIMIT || st == BP_ECONFIG) {
      r->fatal = st;
      r->fatal_err = *bp_last_error();
    }
    if (st) return st;
  }
  if (published) *published = total;
  r->stats.stream_sequence = r->stream_last;
  return BP_OK;
}

void bp_relay_get_stats(bp_relay *r, bp_relay_stats *out) {
  if (!out) return;
  memset(out, 0, sizeof *out);
  if (!r) return;
  *out = r->stats;
  out->stream_sequence = r->stream_last;
  out->behind_events = bp_cursor_behind(r->cursor);
  if (out->behind_events) {
    uint64_t pos = bp_cursor_position(r->cursor);
    bp_entry e;
    if (bp_cursor_poll(r->cursor, &e) == BP_OK) {
      uint64_t now = wall_now_ms();
      out->behind_ms = now > e.wall_ms ? now - e.wall_ms : 0;
    }
    bp_cursor_seek(r->cursor, pos);
  }
}

/* ------------------------------------------------------------ open, close */

void bp_relay_close(bp_relay *r) {
  if (!r) return;
  bp__broker_close(&r->b);
  bp__broker_opts_free(&r->b.opts);
  bp_cursor_close(r->cursor);
  bp_sub_close(r->wake);
  pthread_mutex_destroy(&r->lock);
  free(r->region_prefix);
  free(r->region_scope);
  free(r->subject);
  free(r);
}

bp_status bp_relay_open(bp_store *store, const bp_region *region, const bp_nats_options *opts, bp_relay **out) {
  if (out) *out = NULL;
  if (!store || !out) return bp_set_error(BP_EINVAL, "bp_relay_open: NULL argument");
  bp_relay *r = calloc(1, sizeof *r);
  if (!r) return bp_set_error(BP_ENOMEM, "relay: out of memory");
  pthread_mutex_init(&r->lock, NULL);
  r->store = store;
  r->region = region ? *region : bp_region_all();
  char durable[96];
  snprintf(durable, sizeof durable, "relay.%s", opts && opts->stream ? opts->stream : "");
  bp_status st = bp__broker_opts_copy(opts, durable, &r->b.opts);
  if (!st && ((r->region.entity_prefix && !(r->region_prefix = strdup(r->region.entity_prefix))) ||
              (r->region.scope && !(r->region_scope = strdup(r->region.scope)))))
    st = bp_set_error(BP_ENOMEM, "relay: out of memory");
  r->region.entity_prefix = r->region_prefix;
  r->region.scope = r->region_scope;
  if (!st && !(r->cursor = bp_cursor_open_durable(store, r->b.opts.durable, &r->region))) st = bp_last_error()->code;
  if (!st && !(r->wake = bp_subscribe(store, &r->region))) st = bp_last_error()->code;
  if (!st) {
    st = bp__broker_connect(&r->b, "batpak-relay", ack_handler, r);
  }
  if (!st) st = resync(r, bp__mono_ms() + r->b.opts.o.connect_wait_ms);
  if (st) {
    bp_error err = *bp_last_error();
    bp_relay_close(r);
    bp_set_error(err.code, "%s", err.message);
    return st;
  }
  r->stats.resumes = 0;
  r->backoff_ms = 50;
  *out = r;
  return BP_OK;
}
