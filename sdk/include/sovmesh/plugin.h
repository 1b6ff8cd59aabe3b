/* SPDX-License-Identifier: MIT */
/*
 * sovmesh plugin SDK — the plugin descriptor and the host API table.
 *
 * A plugin is a shared object that exports exactly one symbol,
 * SOVMESH_PLUGIN_ENTRY_SYMBOL, a function returning a constant descriptor.
 * It calls the daemon only through the host API table it is given in
 * create(), so it links no symbol of the core (the SQLite extension
 * pattern).  Every table starts with its own size and only ever grows at
 * the end; the host copies min(size) into a zeroed struct, so an older
 * plugin sees newer slots as NULL (the PipeWire SPA pattern).
 *
 * Compatibility rules (docs/plugin-abi.md has the full text):
 *   - ABI major differs            -> the host refuses the plugin.
 *   - plugin ABI minor > host's    -> the host refuses the plugin.
 *   - plugin ABI minor <= host's   -> loaded; slots the plugin's table is
 *                                     too short to hold are treated as NULL.
 *   - a plugin must check a host slot for NULL (or host->size) before
 *     calling any slot added after ABI 1.0.
 *
 * Threads: unless a slot says otherwise, plugin ops and host API slots are
 * called on the daemon's single event-loop thread.
 */
#ifndef SOVMESH_PLUGIN_H
#define SOVMESH_PLUGIN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SOVMESH_PLUGIN_MAGIC UINT64_C(0x53564d5348504c47) /* "SVMSHPLG" */
#define SOVMESH_ABI_MAJOR    1
#define SOVMESH_ABI_MINOR    0

/* The one symbol a plugin exports. */
#define SOVMESH_PLUGIN_ENTRY_SYMBOL "sovmesh_plugin_entry"

#if defined(__GNUC__)
#define SOVMESH_EXPORT            __attribute__((visibility("default")))
#define SOVMESH_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define SOVMESH_EXPORT
#define SOVMESH_PRINTF(fmt, args)
#endif

/* Plugin kinds.  Values are part of the ABI; file names use the string. */
typedef enum sovmesh_plugin_kind {
	SOVMESH_KIND_DISCOVERY = 1,  /* "discovery" */
	SOVMESH_KIND_BACKEND = 2,    /* "backend"   */
	SOVMESH_KIND_CACHE = 3,      /* "cache"     */
	SOVMESH_KIND_AGGREGATOR = 4, /* "agg"       */
	SOVMESH_KIND_NOISE = 5,      /* "dp"        */
	SOVMESH_KIND_TRAINER = 6,    /* "trainer"   */
} sovmesh_plugin_kind;

/* Log levels, numerically the syslog priorities journald understands. */
typedef enum sovmesh_log_level {
	SOVMESH_LOG_ERROR = 3,
	SOVMESH_LOG_WARNING = 4,
	SOVMESH_LOG_NOTICE = 5,
	SOVMESH_LOG_INFO = 6,
	SOVMESH_LOG_DEBUG = 7,
} sovmesh_log_level;

/*
 * Errors.  Every fallible slot returns 0 or a negative errno value
 * (-EINVAL, -ENOMEM, -ENOTSUP, ...) and, where it takes a sovmesh_error,
 * fills in one human-readable line without a trailing newline.  The
 * caller adds context (file, peer, config key); the plugin says what was
 * wrong with the input ("tensor 'a.lora_A' has shape [4,8], expected
 * [4,16]").
 */
typedef struct sovmesh_error {
	int code;
	char message[512];
} sovmesh_error;

/* Fill `err` (may be NULL) and return `code`, so `return sovmesh_fail(...)`. */
static inline int sovmesh_fail(sovmesh_error *err, int code, const char *fmt, ...)
    SOVMESH_PRINTF(3, 4);
static inline int sovmesh_fail(sovmesh_error *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		err->code = code;
		vsnprintf(err->message, sizeof(err->message), fmt, ap);
		va_end(ap);
	}
	return code;
}

/*
 * Settings a plugin accepts.  A plugin lists them in its descriptor; the
 * host validates the config section `plugin_settings.<kind>-<name>` (and
 * `--param KEY=VALUE` of the offline tools) against the list: an unknown
 * key, a wrong type or an out-of-range value is refused with file, line
 * and key before create() is called.  Plugins then read validated values
 * with the host's setting_* slots; a key that was not given has its
 * default.
 */
typedef enum sovmesh_setting_type {
	SOVMESH_SETTING_BOOL = 1,
	SOVMESH_SETTING_INT = 2,    /* int64, bounds min/max */
	SOVMESH_SETTING_DOUBLE = 3, /* finite double, bounds min/max */
	SOVMESH_SETTING_STRING = 4,
} sovmesh_setting_type;

typedef struct sovmesh_setting_def {
	const char *name; /* [a-z][a-z0-9_]*; NULL ends the list */
	sovmesh_setting_type type;
	const char *default_value; /* as text: "true", "42", "0.2", "median" */
	double min, max;           /* INT and DOUBLE only; both 0 = unbounded */
	const char *help;          /* one line, shown by `sovmesh plugins` */
} sovmesh_setting_def;

/* Opaque types owned by the host. */
typedef struct sovmesh_host sovmesh_host;   /* per plugin instance   */
typedef struct sovmesh_timer sovmesh_timer; /* see timer_start       */
typedef struct sovmesh_watch sovmesh_watch; /* see watch_add         */
typedef struct sovmesh_http_call sovmesh_http_call;

/* fd watch events (watch_add). */
#define SOVMESH_WATCH_READ  1u
#define SOVMESH_WATCH_WRITE 2u
#define SOVMESH_WATCH_ERROR 4u /* only reported, never requested */

/* An outgoing HTTP request made through the core's libcurl (http_request). */
typedef struct sovmesh_http_request {
	uint32_t size;              /* sizeof(sovmesh_http_request) */
	const char *method;         /* "GET", "POST", ...                 */
	const char *url;            /* http:// or https:// URL            */
	const char *const *headers; /* "Name: value" strings, NULL-ended, may be NULL */
	const void *body;           /* may be NULL                        */
	size_t body_len;
	uint32_t timeout_ms;         /* whole request; 0 = no limit        */
	uint32_t connect_timeout_ms; /* 0 = libcurl's default           */
} sovmesh_http_request;

/*
 * Callbacks of one HTTP call, all on the loop thread.  on_status once when
 * the status line and headers are in; on_body for each piece of the body
 * as it arrives (streaming), may be called zero or more times; on_done
 * exactly once, last, unless the call was cancelled with http_cancel (then
 * no callback follows the cancel).  result: 0, or -ECONNREFUSED,
 * -ETIMEDOUT, -EHOSTUNREACH, -EPROTO, -ENOMEM, -EIO; message says what.
 * Return non-zero from on_body to abort the transfer (on_done then gets
 * -ECANCELED).
 */
typedef struct sovmesh_http_callbacks {
	uint32_t size;
	void (*on_status)(void *ud, long http_status);
	int (*on_body)(void *ud, const char *data, size_t len);
	void (*on_done)(void *ud, int result, long http_status, const char *message);
} sovmesh_http_callbacks;

/*
 * The host API table.  The pointer passed to create() stays valid until
 * destroy() returns.  `host` is this plugin instance's handle: pass it
 * back as the first argument of every slot.
 */
typedef struct sovmesh_host_api {
	uint32_t size; /* sizeof(sovmesh_host_api) as the host was built */
	uint16_t abi_major;
	uint16_t abi_minor;

	/* ---- logging: any thread.  Lines are prefixed with the plugin's
	 * "<kind>-<name>".  Query and answer text must only be logged at
	 * SOVMESH_LOG_DEBUG (DESIGN.md §6.7). */
	void (*log)(sovmesh_host *host, sovmesh_log_level level, const char *fmt, ...)
	    SOVMESH_PRINTF(3, 4);
	void (*vlog)(sovmesh_host *host, sovmesh_log_level level, const char *fmt, va_list ap);

	/* ---- memory: any thread.  Same contract as malloc/calloc/realloc/
	 * free; memory handed across the ABI (see each slot) uses these. */
	void *(*alloc)(sovmesh_host *host, size_t size);
	void *(*calloc)(sovmesh_host *host, size_t n, size_t size);
	void *(*realloc)(sovmesh_host *host, void *ptr, size_t size);
	void (*free)(sovmesh_host *host, void *ptr);

	/* ---- time and timers: loop thread. */
	/* Monotonic milliseconds. */
	uint64_t (*now_ms)(sovmesh_host *host);
	/* Wall clock, seconds since the Unix epoch. */
	int64_t (*wall_time)(sovmesh_host *host);
	/* Call cb after timeout_ms, then every repeat_ms if non-zero.  Returns
	 * NULL on out-of-memory.  The timer is owned by the host until
	 * timer_stop(); stopping is allowed inside cb. */
	sovmesh_timer *(*timer_start)(sovmesh_host *host, uint64_t timeout_ms, uint64_t repeat_ms,
	                              void (*cb)(void *ud), void *ud);
	/* Stop and release a timer; NULL is a no-op.  cb is not called again. */
	void (*timer_stop)(sovmesh_host *host, sovmesh_timer *timer);

	/* ---- fd watches: loop thread.  Several watches on one fd are allowed
	 * (libdbus watches a socket for read and write separately); the host
	 * merges them.  cb gets the subset of requested events that are ready,
	 * plus SOVMESH_WATCH_ERROR on error/hang-up.  Removing any watch,
	 * including the current one, inside cb is allowed. */
	sovmesh_watch *(*watch_add)(sovmesh_host *host, int fd, unsigned events,
	                            void (*cb)(void *ud, int fd, unsigned revents), void *ud);
	int (*watch_update)(sovmesh_host *host, sovmesh_watch *watch, unsigned events);
	void (*watch_remove)(sovmesh_host *host, sovmesh_watch *watch);

	/* ---- randomness: any thread.  Cryptographically secure bytes (the
	 * noise mechanisms' only source).  Deterministic only when the
	 * operator ran an offline tool with --seed N --insecure-deterministic. */
	int (*random_bytes)(sovmesh_host *host, void *buf, size_t len);

	/* ---- blocking work: loop thread.  Runs work(ud) on the thread pool,
	 * then done(ud, cancelled) on the loop thread.  Returns 0 or -errno. */
	int (*queue_work)(sovmesh_host *host, void (*work)(void *ud),
	                  void (*done)(void *ud, int cancelled), void *ud);

	/* ---- settings: loop thread.  Values of this plugin's declared
	 * settings, already validated.  A name the plugin did not declare is
	 * a programming error: the host logs it and returns the zero value.
	 * Strings stay valid until destroy(). */
	int (*setting_bool)(sovmesh_host *host, const char *name);
	int64_t (*setting_int)(sovmesh_host *host, const char *name);
	double (*setting_double)(sovmesh_host *host, const char *name);
	const char *(*setting_string)(sovmesh_host *host, const char *name);

	/* ---- node facts: loop thread.  Strings owned by the host. */
	const char *(*node_name)(sovmesh_host *host);
	/* This node's state directory; a plugin keeps its files in
	 * <state_dir>/<kind>-<name>/ (created 0700 by the host). */
	const char *(*plugin_state_dir)(sovmesh_host *host);

	/* ---- tensor sets and adapter files: any thread. */
	/* A new set of `count` tensors shaped like `layout` (names, dtypes and
	 * shapes copied; data zeroed), or, if layout is NULL, an empty set
	 * with room for count tensors that the caller fills with tensor_init.
	 * Freed with tensor_set_free.  NULL on out-of-memory. */
	sovmesh_tensor_set *(*tensor_set_new)(sovmesh_host *host, const sovmesh_tensor_set *layout,
	                                      size_t count);
	/* Give tensor `index` of a set from tensor_set_new(host, NULL, n) its
	 * name, dtype and shape, and allocate zeroed data. */
	int (*tensor_init)(sovmesh_host *host, sovmesh_tensor_set *set, size_t index,
	                   const char *name, sovmesh_dtype dtype, uint32_t ndim,
	                   const uint64_t *shape);
	void (*tensor_set_free)(sovmesh_host *host, sovmesh_tensor_set *set);
	/* Read <dir>/adapter_model.safetensors (and check adapter_config.json
	 * parses) into a new set the caller frees with tensor_set_free. */
	int (*adapter_read)(sovmesh_host *host, const char *dir, sovmesh_tensor_set **out,
	                    sovmesh_error *err);
	/* Write a PEFT adapter directory atomically: the safetensors file and
	 * adapter_config.json (config_json, or a minimal LoRA config if NULL). */
	int (*adapter_write)(sovmesh_host *host, const char *dir, const sovmesh_tensor_set *set,
	                     const char *config_json, sovmesh_error *err);

	/* ---- async HTTP through the core's libcurl: loop thread.  Returns a
	 * call handle owned by the host until on_done (or http_cancel), or
	 * NULL with *err filled. */
	sovmesh_http_call *(*http_request)(sovmesh_host *host, const sovmesh_http_request *req,
	                                   const sovmesh_http_callbacks *cbs, void *ud,
	                                   sovmesh_error *err);
	/* Cancel a call that has not finished; no callback follows.  NULL is
	 * a no-op.  A call whose on_done has run is gone: do not cancel it. */
	void (*http_cancel)(sovmesh_host *host, sovmesh_http_call *call);

	/* ---- events: loop thread.  Named events with a JSON text payload,
	 * delivered to subscribers synchronously in subscription order.
	 * Names the core emits are listed in docs/plugin-abi.md. */
	int (*event_emit)(sovmesh_host *host, const char *name, const char *json);
	int (*event_subscribe)(sovmesh_host *host, const char *name,
	                       void (*cb)(void *ud, const char *name, const char *json), void *ud);
} sovmesh_host_api;

/*
 * The descriptor.  Returned by the entry function; must stay valid and
 * constant for as long as the library is loaded (a static const object).
 */
typedef struct sovmesh_plugin_descriptor {
	uint64_t magic;                      /* SOVMESH_PLUGIN_MAGIC */
	uint32_t size;                       /* sizeof(sovmesh_plugin_descriptor) as built */
	uint16_t abi_major;                  /* SOVMESH_ABI_MAJOR the plugin was built with */
	uint16_t abi_minor;                  /* SOVMESH_ABI_MINOR the plugin was built with */
	uint32_t kind;                       /* sovmesh_plugin_kind */
	const char *name;                    /* "fedavg": [a-z0-9][a-z0-9_]*, matches the file */
	const char *version;                 /* the plugin's own version, e.g. "1.0.0" */
	const char *license;                 /* SPDX identifier */
	const char *description;             /* one line */
	const sovmesh_setting_def *settings; /* NULL-name-terminated; may be NULL */

	/*
	 * Make an instance.  `host` and `api` stay valid until destroy().
	 * Returns 0 and sets *instance (may be NULL if the plugin keeps no
	 * state), or a negative errno with err filled; on failure destroy() is
	 * not called.
	 */
	int (*create)(sovmesh_host *host, const sovmesh_host_api *api, void **instance,
	              sovmesh_error *err);
	/* Release an instance; all its timers, watches and HTTP calls must be
	 * stopped by then.  May be NULL. */
	void (*destroy)(void *instance);
	/* The kind's ops table (discovery.h, backend.h, cache.h, aggregator.h,
	 * noise.h, trainer.h); starts with uint32_t size. */
	const void *ops;
} sovmesh_plugin_descriptor;

/* The entry function's type and the macro that defines it. */
typedef const sovmesh_plugin_descriptor *(*sovmesh_plugin_entry_fn)(void);

#ifdef __cplusplus
#define SOVMESH_EXTERN_C extern "C"
#else
#define SOVMESH_EXTERN_C
#endif

#define SOVMESH_PLUGIN_DEFINE(descriptor_var)                                                      \
	SOVMESH_EXTERN_C SOVMESH_EXPORT const sovmesh_plugin_descriptor *sovmesh_plugin_entry(     \
	    void);                                                                                 \
	SOVMESH_EXTERN_C SOVMESH_EXPORT const sovmesh_plugin_descriptor *sovmesh_plugin_entry(     \
	    void)                                                                                  \
	{                                                                                          \
		return &(descriptor_var);                                                          \
	}

/*
 * Slot check for callers of a size-prefixed table: non-zero when `table`
 * is long enough to hold `member` and the member is set.
 */
#define SOVMESH_HAS_SLOT(table, type, member)                                                      \
	((table) != NULL && (table)->size >= offsetof(type, member) + sizeof((table)->member) &&   \
	 (table)->member != NULL)

#ifdef __cplusplus
}
#endif
#endif /* SOVMESH_PLUGIN_H */
