"""cffi build script: the C declarations the binding uses, compiled against
batpak.h (API mode: cffi takes struct layouts from the header, so nothing
here has to match them byte for byte).

Where the library is: the environment's BATPAK_INCLUDE_DIR and
BATPAK_LIBRARY_DIR (a build tree, say), else pkg-config's batpak, else the
system's default paths. The library directory is also recorded as the
module's run path, so that a library under a non-system prefix is found.
"""
import os
import shlex
import subprocess

from cffi import FFI

CDEF = r"""
typedef enum bp_status {
  BP_OK, BP_EINVAL, BP_ENOMEM, BP_EIO, BP_ECORRUPT, BP_ECRC, BP_ESERIAL, BP_EJSON, BP_ENOTFOUND, BP_ELIMIT,
  BP_ECOORD, BP_ESEQUENCE, BP_EIDEMPOTENCY_REQUIRED, BP_ECONFIG, BP_ELOCKED, BP_EWRITER, BP_ESHUTDOWN,
  BP_ETIMEOUT, BP_ECLOSED, BP_EDENIED, BP_ERECEIPT, BP_EREADONLY, BP_EUNSUPPORTED, BP_EIDEMPOTENCY_CONFLICT,
  BP_EDIVERGED, BP_EFENCED, BP_EBROKER, ...
} bp_status;
typedef enum bp_fact_filter { BP_FACT_ANY, BP_FACT_EXACT, BP_FACT_CATEGORY, ... } bp_fact_filter;
typedef uint16_t bp_kind;
typedef struct { uint64_t hi, lo; } bp_id;
typedef struct { bp_status code; int sys_errno; char message[256]; } bp_error;
typedef struct { const char *entity; const char *scope; } bp_coord;
typedef struct { uint64_t segment_id, offset; uint32_t length; ...; } bp_disk_pos;
typedef struct { uint8_t prev_hash[32]; uint8_t event_hash[32]; } bp_hash_chain;
typedef struct { uint64_t wall_ms; uint16_t counter; uint32_t depth, lane, sequence; ...; } bp_position;
typedef struct {
  bp_id event_id, correlation_id, causation_id; int64_t timestamp_us; bp_position position;
  uint32_t payload_size; bp_kind kind; uint8_t flags; uint8_t content_hash[32]; ...;
} bp_header;
typedef struct {
  bp_header header; const char *entity, *scope; bool has_hash_chain; bp_hash_chain hash_chain;
  const uint8_t *payload; size_t payload_len; ...;
} bp_event;
typedef struct {
  bp_id event_id, correlation_id, causation_id; const char *entity, *scope; bp_kind kind;
  uint64_t wall_ms; uint32_t clock; bp_hash_chain hash_chain; bp_disk_pos disk_pos; uint64_t global_sequence; ...;
} bp_entry;
typedef struct { bp_entry *items; size_t len; } bp_entries;
typedef struct { bp_id event_id; uint64_t sequence; bp_disk_pos disk_pos; ...; } bp_append_receipt;
typedef struct {
  uint32_t expect; uint32_t expected_sequence; bp_id idempotency_key; bp_id correlation_id; bp_id causation_id;
  uint8_t flags; ...;
} bp_append_options;
typedef struct {
  const char *entity_prefix; const char *scope; bp_fact_filter fact; bp_kind kind; uint8_t category; ...;
} bp_region;
typedef struct { bp_id event_id, correlation_id, causation_id; const char *entity, *scope; bp_kind kind;
                 uint64_t sequence; ...; } bp_notification;
typedef struct { const char *data_dir; uint64_t segment_max_bytes; uint32_t sync_every_n_events; ...; } bp_config;
typedef struct { uint64_t event_count; uint64_t global_sequence; ...; } bp_store_stats;
typedef struct bp_store bp_store;
typedef struct bp_cursor bp_cursor;
typedef struct bp_subscription bp_subscription;

#define BP_EXPECT_ANY ...
#define BP_EXPECT_EMPTY ...
#define BP_EXPECT_SEQUENCE ...

const char *bp_version(void);
const char *bp_status_name(bp_status code);
const bp_error *bp_last_error(void);
void bp_free(void *ptr);
void bp_id_to_uuid(bp_id id, char out[37]);
bp_status bp_id_from_uuid(const char *text, bp_id *out);
void bp_id_to_bytes(bp_id id, uint8_t out[16]);
bp_id bp_id_from_bytes(const uint8_t in[16]);
bp_status bp_json_to_msgpack(const char *json, size_t len, uint8_t **out, size_t *out_len);
bp_status bp_msgpack_to_json(const void *msgpack, size_t len, char **out);

void bp_config_init(bp_config *cfg, const char *data_dir);
bp_status bp_open(const bp_config *cfg, bp_store **out);
bp_status bp_open_readonly(const bp_config *cfg, bp_store **out);
bp_status bp_refresh(bp_store *store, uint64_t *added);
bp_status bp_close(bp_store *store);
bp_status bp_append_with(bp_store *store, const bp_coord *coord, bp_kind kind, const void *payload, size_t len,
                         const bp_append_options *opts, bp_append_receipt *out);
bp_status bp_get(bp_store *store, bp_id id, bp_event **out);
void bp_event_free(bp_event *ev);
bp_status bp_get_entry(bp_store *store, bp_id id, bp_entry *out);
bp_status bp_query(bp_store *store, const bp_region *region, bp_entries *out);
bp_status bp_stream(bp_store *store, const char *entity, bp_entries *out);
void bp_entries_free(bp_entries *entries);
bp_region bp_region_all(void);
bp_cursor *bp_cursor_open(bp_store *store, const bp_region *region);
bp_status bp_cursor_poll_batch(bp_cursor *cursor, size_t max, bp_entries *out);
uint64_t bp_cursor_position(const bp_cursor *cursor);
void bp_cursor_seek(bp_cursor *cursor, uint64_t position);
void bp_cursor_close(bp_cursor *cursor);
bp_subscription *bp_subscribe(bp_store *store, const bp_region *region);
bp_status bp_sub_recv(bp_subscription *sub, bp_notification *out, int timeout_ms);
int bp_sub_fd(bp_subscription *sub);
void bp_sub_close(bp_subscription *sub);
void bp_stats(bp_store *store, bp_store_stats *out);
bp_status bp_sync(bp_store *store);
"""


def _locate():
    inc, lib = os.environ.get("BATPAK_INCLUDE_DIR"), os.environ.get("BATPAK_LIBRARY_DIR")
    if inc and lib:
        return [inc], [lib]
    try:
        cflags = subprocess.run(["pkg-config", "--cflags-only-I", "batpak"], capture_output=True, text=True,
                                check=True).stdout
        libs = subprocess.run(["pkg-config", "--libs-only-L", "batpak"], capture_output=True, text=True,
                              check=True).stdout
        return ([f[2:] for f in shlex.split(cflags) if f.startswith("-I")],
                [f[2:] for f in shlex.split(libs) if f.startswith("-L")])
    except (OSError, subprocess.CalledProcessError):
        return [], []


ffibuilder = FFI()
ffibuilder.cdef(CDEF)
_inc, _lib = _locate()
ffibuilder.set_source("batpak._native", "#include <batpak.h>", libraries=["batpak"], include_dirs=_inc,
                      library_dirs=_lib, runtime_library_dirs=_lib)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
