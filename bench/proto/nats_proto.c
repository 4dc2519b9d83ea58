/*
 * nats_proto.c - the baseline and the facts issue #26 (replication through
 * NATS JetStream) builds on, measured on a three-node cluster on loopback
 * (scripts/nats-cluster.sh):
 *
 *   nats-proto URLS [N] [SIZE]
 *
 * 1. asynchronous publishes of N messages of SIZE bytes, each with its own
 *    Nats-Msg-Id, to a stream of 3 replicas on files, acknowledgements
 *    awaited in a window (MaxPending): messages per second, the bare rate a
 *    relay is to be compared with;
 * 2. synchronous publishes, one at a time: the round trip, p50 and p99;
 * 3. de-duplication: the same ids published again are acknowledged as
 *    duplicates and the stream does not grow.
 * Not installed; built when nats.c (libnats-dev) is found.
 */
#include <nats/nats.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void check(natsStatus s, const char *what) {
  if (s == NATS_OK) return;
  fprintf(stderr, "nats-proto: %s: %s\n", what, natsStatus_GetText(s));
  nats_PrintLastErrorStack(stderr);
  exit(1);
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

static natsMsg *message(const char *data, int size, uint64_t id) {
  natsMsg *m;
  char hid[32];
  snprintf(hid, sizeof hid, "proto-%" PRIu64, id);
  check(natsMsg_Create(&m, "bpproto.s.e", NULL, data, size), "message");
  check(natsMsgHeader_Set(m, "Nats-Msg-Id", hid), "header");
  return m;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: nats-proto URLS [N] [SIZE]\n");
    return 2;
  }
  int n = argc > 2 ? atoi(argv[2]) : 100000, size = argc > 3 ? atoi(argv[3]) : 256;
  const char *servers[8];
  int nservers = 0;
  char *urls = strdup(argv[1]);
  for (char *t = strtok(urls, ","); t && nservers < 8; t = strtok(NULL, ",")) servers[nservers++] = t;
  natsOptions *o;
  natsConnection *nc;
  jsCtx *js;
  check(natsOptions_Create(&o), "options");
  check(natsOptions_SetServers(o, servers, nservers), "servers");
  check(natsConnection_Connect(&nc, o), "connect");
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.PublishAsync.MaxPending = 4096;
  check(natsConnection_JetStream(&js, nc, &jo), "jetstream");

  jsErrCode jerr = 0;
  js_DeleteStream(js, "BPPROTO", NULL, &jerr);
  jsStreamConfig sc;
  jsStreamConfig_Init(&sc);
  const char *subjects[] = {"bpproto.>"};
  sc.Name = "BPPROTO";
  sc.Subjects = subjects;
  sc.SubjectsLen = 1;
  sc.Storage = js_FileStorage;
  sc.Replicas = 3;
  sc.Duplicates = (int64_t)120 * 1000000000; /* the de-duplication window, 2 minutes */
  jsStreamInfo *si = NULL;
  natsStatus s = NATS_ERR;
  for (int tries = 0; tries < 50 && s != NATS_OK; tries++) { /* the cluster's meta leader may still be elected */
    s = js_AddStream(&si, js, &sc, NULL, &jerr);
    if (s != NATS_OK) nats_Sleep(100);
  }
  check(s, "add stream");
  jsStreamInfo_Destroy(si);

  char *data = malloc((size_t)size);
  for (int i = 0; i < size; i++) data[i] = (char)(i * 7);

  /* 1. asynchronous, in a window */
  uint64_t t0 = now_ns();
  for (int i = 0; i < n; i++) {
    natsMsg *m = message(data, size, (uint64_t)i);
    check(js_PublishMsgAsync(js, &m, NULL), "publish async");
  }
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MaxWait = 60000;
  check(js_PublishAsyncComplete(js, &po), "publish async complete");
  double secs = (double)(now_ns() - t0) / 1e9;
  printf("async publish: %d messages of %d bytes, 3 replicas on files: %.0f msgs/s (%.1f MB/s)\n", n, size,
         n / secs, n * (double)size / secs / 1e6);

  /* 2. synchronous, one at a time */
  enum { SYNC = 2000 };
  static uint64_t lat[SYNC];
  for (int i = 0; i < SYNC; i++) {
    natsMsg *m = message(data, size, (uint64_t)(n + i));
    jsPubAck *pa = NULL;
    uint64_t a = now_ns();
    check(js_PublishMsg(&pa, js, m, NULL, &jerr), "publish");
    lat[i] = now_ns() - a;
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(m);
  }
  qsort(lat, SYNC, sizeof *lat, cmp_u64);
  printf("sync publish round trip: p50 %.1f us, p99 %.1f us, max %.1f us\n", lat[SYNC / 2] / 1e3,
         lat[SYNC * 99 / 100] / 1e3, lat[SYNC - 1] / 1e3);

  /* 3. de-duplication inside the window */
  int dups = 0;
  for (int i = 0; i < 1000; i++) {
    natsMsg *m = message(data, size, (uint64_t)i);
    jsPubAck *pa = NULL;
    check(js_PublishMsg(&pa, js, m, NULL, &jerr), "republish");
    dups += pa->Duplicate;
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(m);
  }
  check(js_GetStreamInfo(&si, js, "BPPROTO", NULL, &jerr), "stream info");
  printf("republished 1000 ids: %d acknowledged as duplicates; the stream holds %" PRIu64 " messages (%d sent)\n",
         dups, si->State.Msgs, n + SYNC);
  jsStreamInfo_Destroy(si);
  js_DeleteStream(js, "BPPROTO", NULL, &jerr);
  free(data);
  free(urls);
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
  natsOptions_Destroy(o);
  nats_Close();
  return 0;
}
