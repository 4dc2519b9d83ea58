/*
 * token.c - one subject token from any text, reversibly. NATS subjects are
 * dot-separated tokens in which '.', '*', '>' and white space have meaning;
 * an event's scope and entity may hold any UTF-8. So every byte outside
 * [A-Za-z0-9_-] is written "~XX" (the byte in upper-case hex), '~' itself
 * included: decoding is then unambiguous, and a token never contains a byte
 * NATS reads specially.
 */
#include "batpak/replication.h"

#include <string.h>

static bool plain(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

size_t bp_nats_token_escape(const char *text, size_t len, char *out, size_t size) {
  static const char hex[] = "0123456789ABCDEF";
  size_t n = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)text[i];
    char enc[3] = {(char)c, 0, 0};
    size_t k = 1;
    if (!plain(c)) {
      enc[0] = '~';
      enc[1] = hex[c >> 4];
      enc[2] = hex[c & 15];
      k = 3;
    }
    for (size_t j = 0; j < k; j++, n++)
      if (out && n + 1 < size) out[n] = enc[j];
  }
  if (out && size) out[n < size ? n : size - 1] = '\0';
  return n;
}

static int digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1; /* lower case is never written, so never read either */
}

size_t bp_nats_token_unescape(const char *token, size_t len, char *out, size_t size) {
  size_t n = 0;
  for (size_t i = 0; i < len; i++, n++) {
    unsigned char c = (unsigned char)token[i];
    if (c == '~') {
      if (len - i < 3) return SIZE_MAX;
      int hi = digit(token[i + 1]), lo = digit(token[i + 2]);
      if (hi < 0 || lo < 0) return SIZE_MAX;
      c = (unsigned char)(hi << 4 | lo);
      if (plain(c)) return SIZE_MAX; /* an escape the encoder never writes */
      i += 2;
    } else if (!plain(c)) {
      return SIZE_MAX;
    }
    if (out && n + 1 < size) out[n] = (char)c;
  }
  if (out && size) out[n < size ? n : size - 1] = '\0';
  return n;
}
