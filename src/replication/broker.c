/*
 * broker.c - options, the connection to NATS, and nats.c's failures as
 * bp_status (broker.h).
 */
#include "replication/broker.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void bp_nats_options_init(bp_nats_options *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->subject_prefix = "batpak";
  o->replicas = 1;
  o->duplicate_window_ms = 120000;
  o->max_pending = 4096;
  o->ack_wait_ms = 5000;
  o->connect_wait_ms = 10000;
  o->fetch_batch = 1024;
}

int64_t bp__mono_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

void bp__hex(const uint8_t *p, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[p[i] >> 4];
    out[2 * i + 1] = digits[p[i] & 15];
  }
  out[2 * n] = '\0';
}

const char *bp__header(natsMsg *m, const char *key) {
  const char *v = NULL;
  return natsMsgHeader_Get(m, key, &v) == NATS_OK ? v : NULL;
}

void bp__broker_log(const bp__broker *b, int level, const char *fmt, ...) {
  if (!b->opts.o.log_fn) return;
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  b->opts.o.log_fn(level, msg, b->opts.o.log_ctx);
}

/* ------------------------------------------------------------ options */

static bool name_ok(const char *s, size_t max, bool dots) {
  size_t n = strlen(s);
  if (n == 0 || n > max) return false;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
              (dots && c == '.' && i > 0 && i + 1 < n && s[i + 1] != '.');
    if (!ok) return false;
  }
  return true;
}

static bool dup_into(char **dst, const char *src) {
  if (!src) return true;
  *dst = strdup(src);
  return *dst != NULL;
}

void bp__broker_opts_free(bp__broker_opts *o) {
  char **owned[] = {&o->urls, &o->stream, &o->prefix, &o->durable, &o->creds_file, &o->user, &o->password,
                    &o->token, &o->tls_ca_file, &o->tls_cert_file, &o->tls_key_file};
  for (size_t i = 0; i < sizeof owned / sizeof owned[0]; i++) {
    free(*owned[i]);
    *owned[i] = NULL;
  }
}

bp_status bp__broker_opts_copy(const bp_nats_options *in, const char *durable_default, bp__broker_opts *out) {
  memset(out, 0, sizeof *out);
  if (!in) return bp_set_error(BP_EINVAL, "replication: NULL options");
  if (!in->urls || !*in->urls) return bp_set_error(BP_EINVAL, "replication: no server URLs (urls)");
  if (!in->stream || !name_ok(in->stream, 64, false))
    return bp_set_error(BP_EINVAL, "replication: stream name \"%s\" must be 1-64 characters of [A-Za-z0-9_-]",
                        in->stream ? in->stream : "(null)");
  const char *prefix = in->subject_prefix ? in->subject_prefix : "batpak";
  if (!name_ok(prefix, 128, true))
    return bp_set_error(BP_EINVAL, "replication: subject prefix \"%s\" must be dot-separated tokens of "
                        "[A-Za-z0-9_-]", prefix);
  char durable[160];
  snprintf(durable, sizeof durable, "%s", in->durable ? in->durable : durable_default);
  if (!name_ok(durable, 128, true))
    return bp_set_error(BP_EINVAL, "replication: durable name \"%s\" must be 1-128 characters of [A-Za-z0-9_.-]",
                        durable);
  if (in->replicas < 1 || in->replicas > 5)
    return bp_set_error(BP_EINVAL, "replication: replicas must be 1 to 5, not %" PRIu32, in->replicas);
  if (in->max_pending < 1 || in->max_pending > 1u << 20)
    return bp_set_error(BP_EINVAL, "replication: max_pending must be 1 to 1048576, not %" PRIu32, in->max_pending);
  if (in->fetch_batch < 1 || in->fetch_batch > 1u << 16)
    return bp_set_error(BP_EINVAL, "replication: fetch_batch must be 1 to 65536, not %" PRIu32, in->fetch_batch);
  if (in->ack_wait_ms < 10) return bp_set_error(BP_EINVAL, "replication: ack_wait_ms must be at least 10");
  /* nats.c reads a credentials file only when it connects, and then says
   * little: a missing one is named here. */
  if (in->creds_file && access(in->creds_file, R_OK) != 0)
    return bp_set_error(BP_EINVAL, "replication: credentials file %s: %s", in->creds_file, strerror(errno));
  if ((in->tls_cert_file == NULL) != (in->tls_key_file == NULL))
    return bp_set_error(BP_EINVAL, "replication: a client certificate needs both tls_cert_file and tls_key_file");
  out->o = *in;
  bool ok = dup_into(&out->urls, in->urls) && dup_into(&out->stream, in->stream) && dup_into(&out->prefix, prefix) &&
            dup_into(&out->durable, durable) && dup_into(&out->creds_file, in->creds_file) &&
            dup_into(&out->user, in->user) && dup_into(&out->password, in->password) &&
            dup_into(&out->token, in->token) && dup_into(&out->tls_ca_file, in->tls_ca_file) &&
            dup_into(&out->tls_cert_file, in->tls_cert_file) && dup_into(&out->tls_key_file, in->tls_key_file);
  if (!ok) {
    bp__broker_opts_free(out);
    return bp_set_error(BP_ENOMEM, "replication: out of memory for options");
  }
  out->o.urls = out->urls;
  out->o.stream = out->stream;
  out->o.subject_prefix = out->prefix;
  out->o.durable = out->durable;
  return BP_OK;
}

/* ------------------------------------------------------------ failures */

bp_status bp__broker_fail(const bp__broker *b, natsStatus s, jsErrCode jerr, const char *what) {
  const char *text = natsStatus_GetText(s);
  natsStatus ls;
  const char *detail = nats_GetLastError(&ls);
  char extra[200] = "";
  if (detail && *detail && strcmp(detail, text) != 0) snprintf(extra, sizeof extra, " (%s)", detail);
  char code[48] = "";
  if (jerr) snprintf(code, sizeof code, ", JetStream error %d", (int)jerr);
  bp_status st = BP_EBROKER;
  if (s == NATS_NO_MEMORY) st = BP_ENOMEM;
  else if (jerr == JSStreamNotFoundErr || jerr == JSConsumerNotFoundErr) st = BP_ENOTFOUND;
  else if (s == NATS_MAX_PAYLOAD) st = BP_ELIMIT;
  return bp_set_error(st, "%s (stream %s at %s): %s%s%s", what, b->opts.stream, b->opts.urls, text, extra,
                      code);
}

/* ------------------------------------------------------------ connection */

typedef struct file_load {
  const char *file, *what;
  natsStatus st;
} file_load;

/* urls is a copy of the URLs that this cuts into pieces. */
static bp_status apply_options(bp__broker *b, natsOptions *no, const char *client_name, char *urls) {
  bp__broker_opts *o = &b->opts;
  /* nats.c wants an array of URLs. */
  const char *servers[32];
  int n = 0;
  char *save = NULL;
  for (char *t = strtok_r(urls, ",", &save); t && n < 32; t = strtok_r(NULL, ",", &save)) {
    while (*t == ' ') t++;
    if (*t) servers[n++] = t;
  }
  natsStatus s = n ? natsOptions_SetServers(no, servers, n) : NATS_INVALID_ARG;
  if (s != NATS_OK) return bp_set_error(BP_EINVAL, "replication: server URLs \"%s\" are not usable: %s", o->urls,
                                        natsStatus_GetText(s));
  if ((s = natsOptions_SetName(no, client_name)) != NATS_OK ||
      (s = natsOptions_SetTimeout(no, 2000)) != NATS_OK ||
      /* Once connected, keep reconnecting for ever: a broker outage is
       * waited out, and the relay or follower resumes from the stream. */
      (s = natsOptions_SetMaxReconnect(no, -1)) != NATS_OK ||
      (s = natsOptions_SetReconnectWait(no, 250)) != NATS_OK ||
      (s = natsOptions_SetPingInterval(no, 2000)) != NATS_OK ||
      (s = natsOptions_SetMaxPingsOut(no, 3)) != NATS_OK)
    return bp_set_error(BP_ENOMEM, "replication: nats options: %s", natsStatus_GetText(s));
  file_load loads[3] = {{NULL, NULL, NATS_OK}, {NULL, NULL, NATS_OK}, {NULL, NULL, NATS_OK}};
  if (o->user || o->password) s = natsOptions_SetUserInfo(no, o->user, o->password);
  if (s == NATS_OK && o->token) s = natsOptions_SetToken(no, o->token);
  if (s != NATS_OK) return bp_set_error(BP_EINVAL, "replication: user or token refused: %s", natsStatus_GetText(s));
  if (o->creds_file)
    loads[0] = (file_load){o->creds_file, "credentials file",
                           natsOptions_SetUserCredentialsFromFiles(no, o->creds_file, NULL)};
  if (o->o.tls_required || o->tls_ca_file || o->tls_cert_file) {
    s = natsOptions_SetSecure(no, true);
    if (s != NATS_OK) return bp_set_error(BP_EUNSUPPORTED, "replication: TLS: %s (nats.c built without TLS?)",
                                          natsStatus_GetText(s));
  }
  if (o->tls_ca_file)
    loads[1] = (file_load){o->tls_ca_file, "TLS CA file", natsOptions_LoadCATrustedCertificates(no, o->tls_ca_file)};
  if (o->tls_cert_file)
    loads[2] = (file_load){o->tls_cert_file, "TLS certificate or key file",
                           natsOptions_LoadCertificatesChain(no, o->tls_cert_file, o->tls_key_file)};
  for (int i = 0; i < 3; i++)
    if (loads[i].file && loads[i].st != NATS_OK) {
      natsStatus ls;
      const char *detail = nats_GetLastError(&ls);
      return bp_set_error(BP_EINVAL, "replication: %s %s: %s", loads[i].what, loads[i].file,
                          detail && *detail ? detail : natsStatus_GetText(loads[i].st));
    }
  return BP_OK;
}

bp_status bp__broker_connect(bp__broker *b, const char *client_name, jsPubAckHandler ack, void *ack_ctx) {
  b->nc = NULL;
  b->js = NULL;
  /* apply_options cuts its copy of the URLs into pieces. */
  char *for_parsing = strdup(b->opts.urls);
  if (!for_parsing) return bp_set_error(BP_ENOMEM, "replication: out of memory");
  natsOptions *no = NULL;
  natsStatus s = natsOptions_Create(&no);
  bp_status st = s == NATS_OK ? BP_OK : bp_set_error(BP_ENOMEM, "replication: nats options: %s", natsStatus_GetText(s));
  if (!st) st = apply_options(b, no, client_name, for_parsing);
  if (st) {
    natsOptions_Destroy(no);
    free(for_parsing);
    return st;
  }
  /* Retry with doubling waits (100 ms to 2 s) until connect_wait_ms. */
  int64_t deadline = bp__mono_ms() + b->opts.o.connect_wait_ms;
  int64_t wait = 100;
  int attempts = 0;
  for (;;) {
    attempts++;
    s = natsConnection_Connect(&b->nc, no);
    if (s == NATS_OK) break;
    if (s != NATS_NO_SERVER && s != NATS_TIMEOUT && s != NATS_IO_ERROR && s != NATS_CONNECTION_CLOSED) break;
    int64_t now = bp__mono_ms();
    if (now >= deadline) break;
    bp__broker_log(b, BP_LOG_WARN, "replication: cannot reach %s yet (%s); trying again in %" PRId64 " ms",
                   b->opts.urls, natsStatus_GetText(s), wait);
    nats_Sleep(wait < deadline - now ? wait : deadline - now);
    wait = wait * 2 > 2000 ? 2000 : wait * 2;
  }
  if (s != NATS_OK) {
    natsStatus ls;
    const char *detail = nats_GetLastError(&ls);
    st = bp_set_error(s == NATS_NO_MEMORY ? BP_ENOMEM : BP_EBROKER,
                      "replication: cannot reach NATS at %s after %d attempt%s in %" PRIu32 " ms: %s%s%s%s",
                      b->opts.urls, attempts, attempts == 1 ? "" : "s", b->opts.o.connect_wait_ms,
                      natsStatus_GetText(s), detail && *detail ? " (" : "", detail ? detail : "",
                      detail && *detail ? ")" : "");
    natsOptions_Destroy(no);
    free(for_parsing);
    return st;
  }
  natsOptions_Destroy(no);
  free(for_parsing);
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.Wait = b->opts.o.ack_wait_ms;
  jo.PublishAsync.MaxPending = b->opts.o.max_pending;
  jo.PublishAsync.AckHandler = ack;
  jo.PublishAsync.AckHandlerClosure = ack_ctx;
  s = natsConnection_JetStream(&b->js, b->nc, &jo);
  if (s != NATS_OK) {
    st = bp__broker_fail(b, s, 0, "replication: JetStream context");
    bp__broker_close(b);
    return st;
  }
  return BP_OK;
}

void bp__broker_close(bp__broker *b) {
  if (b->js) jsCtx_Destroy(b->js);
  if (b->nc) {
    natsConnection_Close(b->nc);
    natsConnection_Destroy(b->nc);
  }
  b->js = NULL;
  b->nc = NULL;
}
