/*
 * mini_host: a minimal host for testing one plugin in isolation.
 *
 * It dlopens a plugin built in this tree ($SOVMESH_BUILD_PLUGIN_DIR/<file>.so),
 * checks its descriptor, and calls create() with a host API table whose
 * slots are plain libc: logging (kept for the test to inspect), memory,
 * clocks, random bytes (gnutls_rnd, or a seeded ChaCha stream for tests
 * that need identical output twice), settings from a name->value list, and
 * tensor sets.  It uses no core code, so a plugin test fails only for the
 * plugin's own faults.  Timers, fd watches, the thread pool, HTTP, events,
 * adapter I/O and the state directory are NULL: a plugin needing them is
 * tested against the real host instead.
 *
 * Single-threaded test use only (the random stream is not locked).
 */
#ifndef SOVMESH_TEST_MINI_HOST_H
#define SOVMESH_TEST_MINI_HOST_H

#include <stdint.h>

#include <sovmesh/plugin.h>

/* One setting given to the plugin, as config text ("2.5", "true"). */
typedef struct mini_setting {
	const char *name;
	const char *value;
} mini_setting;

struct mini_rng;

typedef struct mini_host {
	/* Read-only for tests. */
	const sovmesh_plugin_descriptor *desc; /* the plugin's, static */
	void *instance;                        /* what create() returned */
	sovmesh_host *host;                    /* handle given to the plugin */
	sovmesh_host_api api;                  /* the table given to the plugin */
	char last_log[512];                    /* last line the plugin logged */
	int last_log_level;
	unsigned log_count;
	uint64_t random_bytes_served; /* total bytes random_bytes gave */

	/* Set by tests: non-zero makes random_bytes fail with -EIO. */
	int random_fail;

	/* Private. */
	void *dl;
	const mini_setting *settings; /* borrowed, NULL-name-terminated */
	struct mini_rng *rng;         /* NULL = gnutls_rnd */
} mini_host;

/*
 * Load <dir>/<file>.so where dir is $SOVMESH_BUILD_PLUGIN_DIR (e.g. file
 * "agg-fedavg"), check magic and ABI, validate `settings` against the
 * descriptor (unknown key, unparsable or out-of-range value: -EINVAL),
 * and create an instance.  `settings` is NULL or ends with a NULL name; it
 * is borrowed and must outlive the mini_host.  0 with *out set (free with
 * mini_host_close), or -errno with err filled (create()'s own message
 * when create() failed).
 */
int mini_host_open(const char *file, const mini_setting *settings, mini_host **out,
                   sovmesh_error *err);

/* destroy() the instance, dlclose, free.  NULL is a no-op. */
void mini_host_close(mini_host *mh);

/*
 * From now on random_bytes returns a ChaCha20 keystream keyed by `seed`
 * (the same seed gives the same bytes); never for anything but tests.
 * Calling it again restarts the stream.  0 or -ENOMEM.
 */
int mini_host_seed(mini_host *mh, uint64_t seed);

/*
 * Convenience for tests: a set of `count` tensors all of `dtype`, tensor i
 * named names[i] with shape shapes[i][0..ndims[i]-1], data zeroed, made
 * with the table's own tensor_set_new/tensor_init.  Free it with
 * mh->api.tensor_set_free(mh->host, set).  NULL on failure.
 */
sovmesh_tensor_set *mini_host_make_set(mini_host *mh, size_t count, const char *const *names,
                                       sovmesh_dtype dtype, const uint32_t *ndims,
                                       const uint64_t (*shapes)[SOVMESH_TENSOR_MAX_DIMS]);

#endif
