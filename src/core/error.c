/* error.c - status names, the thread-local last error, and small shared helpers. */
#include "internal.h"

#include <errno.h>
#include <stdio.h>

static _Thread_local bp_error last_error;

static const struct {
  const char *name;
  const char *text;
} status_table[] = {
  [BP_OK] = {"BP_OK", "success"},
  [BP_EINVAL] = {"BP_EINVAL", "invalid argument"},
  [BP_ENOMEM] = {"BP_ENOMEM", "out of memory"},
  [BP_EIO] = {"BP_EIO", "input/output error"},
  [BP_ECORRUPT] = {"BP_ECORRUPT", "stored data is corrupt"},
  [BP_ECRC] = {"BP_ECRC", "checksum mismatch"},
  [BP_ESERIAL] = {"BP_ESERIAL", "malformed serialized data"},
  [BP_EJSON] = {"BP_EJSON", "malformed JSON"},
  [BP_ENOTFOUND] = {"BP_ENOTFOUND", "not found"},
  [BP_ELIMIT] = {"BP_ELIMIT", "size limit exceeded"},
  [BP_ECOORD] = {"BP_ECOORD", "invalid coordinate"},
  [BP_ESEQUENCE] = {"BP_ESEQUENCE", "expected sequence does not match"},
  [BP_EIDEMPOTENCY_REQUIRED] = {"BP_EIDEMPOTENCY_REQUIRED",
                                "group commit requires an idempotency key"},
  [BP_ECONFIG] = {"BP_ECONFIG", "invalid configuration"},
  [BP_ELOCKED] = {"BP_ELOCKED", "store is locked by another process"},
  [BP_EWRITER] = {"BP_EWRITER", "writer has failed; reopen the store"},
  [BP_ESHUTDOWN] = {"BP_ESHUTDOWN", "store is shutting down"},
  [BP_ETIMEOUT] = {"BP_ETIMEOUT", "timed out"},
  [BP_ECLOSED] = {"BP_ECLOSED", "store is closed"},
  [BP_EDENIED] = {"BP_EDENIED", "denied by a policy gate"},
  [BP_ERECEIPT] = {"BP_ERECEIPT", "receipt is consumed or invalid"},
  [BP_EREADONLY] = {"BP_EREADONLY", "store is read-only"},
  [BP_EUNSUPPORTED] = {"BP_EUNSUPPORTED", "not supported by this build"},
  [BP_EIDEMPOTENCY_CONFLICT] = {"BP_EIDEMPOTENCY_CONFLICT", "idempotency key already used for another event"},
  [BP_EDIVERGED] = {"BP_EDIVERGED", "replicated events do not continue this store"},
  [BP_EFENCED] = {"BP_EFENCED", "another primary publishes into the stream"},
  [BP_EBROKER] = {"BP_EBROKER", "message broker unreachable or refused the request"},
};

#define STATUS_COUNT (sizeof status_table / sizeof status_table[0])

const char *bp_status_name(bp_status code) {
  if ((unsigned)code < STATUS_COUNT) return status_table[code].name;
  return "BP_E?";
}

const char *bp_strerror(bp_status code) {
  if ((unsigned)code < STATUS_COUNT) return status_table[code].text;
  return "unknown status code";
}

const bp_error *bp_last_error(void) { return &last_error; }

/* The message is formatted aside and then copied in, so that it may quote the
 * previous one (bp_last_error()->message as an argument): formatting into the
 * buffer an argument is read from overlaps, and glibc then repeats the prefix. */
BP__PRINTF(3, 0) static bp_status record(bp_status code, int err, const char *fmt, va_list ap) {
  char msg[sizeof last_error.message];
  int n = vsnprintf(msg, sizeof msg, fmt, ap);
  memcpy(last_error.message, msg, sizeof msg);
  last_error.code = code;
  last_error.sys_errno = err;
  if (err != 0 && n >= 0 && (size_t)n < sizeof last_error.message) {
    char sysbuf[96];
    const char *s = sysbuf;
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
    s = strerror_r(err, sysbuf, sizeof sysbuf);
#else
    if (strerror_r(err, sysbuf, sizeof sysbuf) != 0) snprintf(sysbuf, sizeof sysbuf, "errno %d", err);
#endif
    snprintf(last_error.message + n, sizeof last_error.message - (size_t)n, ": %s", s);
  }
  return code;
}

bp_status bp_set_error(bp_status code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  record(code, 0, fmt, ap);
  va_end(ap);
  return code;
}

bp_status bp__fail_errno(bp_status code, int err, const char *fmt, ...) {
  /* A call that failed for want of memory is reported as that, whatever
   * kind of step it was: the caller can free memory and try again. */
  if (err == ENOMEM) code = BP_ENOMEM;
  va_list ap;
  va_start(ap, fmt);
  record(code, err, fmt, ap);
  va_end(ap);
  return code;
}

BP__PRINTF(1, 0) static void prefix_message(const char *fmt, va_list ap) {
  char prefix[128], old[sizeof last_error.message];
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  /* A message that names the place already (a decoder's own record name)
   * keeps its one mention. */
  size_t plen = strlen(prefix);
  if (strncmp(last_error.message, prefix, plen) == 0 && strncmp(last_error.message + plen, ": ", 2) == 0) return;
  memcpy(old, last_error.message, sizeof old);
  /* prefix ": " old, truncated to the message buffer. */
  size_t cap = sizeof last_error.message - 1, n = 0;
  const char *parts[3] = {prefix, ": ", old};
  for (int i = 0; i < 3 && n < cap; i++) {
    size_t len = strlen(parts[i]);
    if (len > cap - n) len = cap - n;
    memcpy(last_error.message + n, parts[i], len);
    n += len;
  }
  last_error.message[n] = '\0';
}

bp_status bp__fail_context(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  prefix_message(fmt, ap);
  va_end(ap);
  return last_error.code;
}

bp_status bp__fail_within(bp_status code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  prefix_message(fmt, ap);
  va_end(ap);
  /* Running out of memory while decoding does not make the data corrupt. */
  if (last_error.code != BP_ENOMEM) last_error.code = code;
  return last_error.code;
}

void bp_free(void *ptr) { free(ptr); }

const char *bp_version(void) { return BP_VERSION_STRING; }
unsigned bp_version_number(void) { return BP_VERSION_NUMBER; }

/* ---- bp__buf ---- */

void bp__buf_init(bp__buf *b) { memset(b, 0, sizeof *b); }

void bp__buf_init_on(bp__buf *b, uint8_t *mem, size_t cap) { *b = (bp__buf){mem, 0, cap, false, true}; }

void bp__buf_free(bp__buf *b) {
  if (!b->borrowed) free(b->data);
  memset(b, 0, sizeof *b);
}

bool bp__buf_reserve(bp__buf *b, size_t n) {
  if (b->oom) return false;
  if (b->cap - b->len >= n) return true;
  size_t want = b->len + n;
  if (want < b->len) { b->oom = true; return false; }
  size_t cap = b->cap ? b->cap : 256;
  while (cap < want) {
    if (cap > SIZE_MAX / 2) { cap = want; break; }
    cap *= 2;
  }
  uint8_t *p = b->borrowed ? malloc(cap) : realloc(b->data, cap);
  if (!p) { b->oom = true; return false; }
  if (b->borrowed && b->len) memcpy(p, b->data, b->len);
  b->borrowed = false;
  b->data = p;
  b->cap = cap;
  return true;
}

void bp__buf_append(bp__buf *b, const void *src, size_t n) {
  if (n == 0 || !bp__buf_reserve(b, n)) return;
  memcpy(b->data + b->len, src, n);
  b->len += n;
}

void bp__set_error(const bp_error *err) { last_error = *err; }
