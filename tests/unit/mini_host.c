/*
 * mini_host: see mini_host.h.  Every slot is the simplest libc version of
 * what the real host does, so plugin tests do not depend on core code.
 */
#include "mini_host.h"

#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <nettle/chacha.h>

/* The opaque handle the plugin passes back to every slot. */
struct sovmesh_host {
	mini_host *mh;
};

/* A seeded ChaCha20 keystream, served from one block at a time because
 * nettle's chacha_crypt wants whole blocks except on its last call. */
struct mini_rng {
	struct chacha_ctx ctx;
	uint8_t block[CHACHA_BLOCK_SIZE];
	size_t pos;
};

static mini_host *mh_of(sovmesh_host *host)
{
	return host->mh;
}

/* ---- logging ---- */

static void mh_vlog(sovmesh_host *host, sovmesh_log_level level, const char *fmt, va_list ap)
{
	mini_host *mh = mh_of(host);
	vsnprintf(mh->last_log, sizeof(mh->last_log), fmt, ap);
	mh->last_log_level = (int)level;
	mh->log_count++;
	if (getenv("MINI_HOST_VERBOSE") || level <= SOVMESH_LOG_WARNING)
		fprintf(stderr, "mini_host: %s-%s: %s\n",
		        mh->desc->kind == SOVMESH_KIND_AGGREGATOR ? "agg"
		        : mh->desc->kind == SOVMESH_KIND_NOISE    ? "dp"
		                                                  : "plugin",
		        mh->desc->name, mh->last_log);
}

static void mh_log(sovmesh_host *host, sovmesh_log_level level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	mh_vlog(host, level, fmt, ap);
	va_end(ap);
}

/* ---- memory and time ---- */

static void *mh_alloc(sovmesh_host *host, size_t size)
{
	(void)host;
	return malloc(size);
}

static void *mh_calloc(sovmesh_host *host, size_t n, size_t size)
{
	(void)host;
	return calloc(n, size);
}

static void *mh_realloc(sovmesh_host *host, void *ptr, size_t size)
{
	(void)host;
	return realloc(ptr, size);
}

static void mh_free(sovmesh_host *host, void *ptr)
{
	(void)host;
	free(ptr);
}

static uint64_t mh_now_ms(sovmesh_host *host)
{
	(void)host;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int64_t mh_wall_time(sovmesh_host *host)
{
	(void)host;
	return (int64_t)time(NULL);
}

/* ---- randomness ---- */

static int mh_random_bytes(sovmesh_host *host, void *buf, size_t len)
{
	mini_host *mh = mh_of(host);
	if (mh->random_fail)
		return -EIO;
	if (!mh->rng) {
		if (gnutls_rnd(GNUTLS_RND_RANDOM, buf, len) < 0)
			return -EIO;
	} else {
		uint8_t *p = buf;
		for (size_t i = 0; i < len; i++) {
			if (mh->rng->pos == sizeof(mh->rng->block)) {
				memset(mh->rng->block, 0, sizeof(mh->rng->block));
				chacha_crypt(&mh->rng->ctx, sizeof(mh->rng->block), mh->rng->block,
				             mh->rng->block);
				mh->rng->pos = 0;
			}
			p[i] = mh->rng->block[mh->rng->pos++];
		}
	}
	mh->random_bytes_served += len;
	return 0;
}

int mini_host_seed(mini_host *mh, uint64_t seed)
{
	if (!mh->rng) {
		mh->rng = calloc(1, sizeof(*mh->rng));
		if (!mh->rng)
			return -ENOMEM;
	}
	uint8_t key[CHACHA_KEY_SIZE] = {0};
	uint8_t nonce[CHACHA_NONCE_SIZE] = {0};
	for (int i = 0; i < 8; i++)
		key[i] = (uint8_t)(seed >> (8 * i));
	chacha_set_key(&mh->rng->ctx, key);
	chacha_set_nonce(&mh->rng->ctx, nonce);
	mh->rng->pos = sizeof(mh->rng->block);
	return 0;
}

/* ---- settings ---- */

static const sovmesh_setting_def *find_def(const mini_host *mh, const char *name)
{
	for (const sovmesh_setting_def *d = mh->desc->settings; d && d->name; d++)
		if (strcmp(d->name, name) == 0)
			return d;
	return NULL;
}

/* The text of a declared setting: the test's value, else the default. */
static const char *setting_text(sovmesh_host *host, const char *name,
                                const sovmesh_setting_def **def)
{
	mini_host *mh = mh_of(host);
	*def = find_def(mh, name);
	if (!*def) {
		mh_log(host, SOVMESH_LOG_ERROR, "mini_host: setting '%s' was not declared", name);
		return NULL;
	}
	for (const mini_setting *s = mh->settings; s && s->name; s++)
		if (strcmp(s->name, name) == 0)
			return s->value;
	return (*def)->default_value;
}

static int mh_setting_bool(sovmesh_host *host, const char *name)
{
	const sovmesh_setting_def *def;
	const char *v = setting_text(host, name, &def);
	return v && strcmp(v, "true") == 0;
}

static int64_t mh_setting_int(sovmesh_host *host, const char *name)
{
	const sovmesh_setting_def *def;
	const char *v = setting_text(host, name, &def);
	return v ? strtoll(v, NULL, 10) : 0;
}

static double mh_setting_double(sovmesh_host *host, const char *name)
{
	const sovmesh_setting_def *def;
	const char *v = setting_text(host, name, &def);
	return v ? strtod(v, NULL) : 0.0;
}

static const char *mh_setting_string(sovmesh_host *host, const char *name)
{
	const sovmesh_setting_def *def;
	return setting_text(host, name, &def);
}

/* What the real host checks before create(): known key, parsable value,
 * within [min, max] unless both are 0. */
static int validate_settings(const mini_host *mh, sovmesh_error *err)
{
	for (const mini_setting *s = mh->settings; s && s->name; s++) {
		const sovmesh_setting_def *d = find_def(mh, s->name);
		if (!d)
			return sovmesh_fail(err, -EINVAL, "unknown setting '%s'", s->name);
		char *end = NULL;
		double v = 0;
		errno = 0;
		switch (d->type) {
		case SOVMESH_SETTING_BOOL:
			if (strcmp(s->value, "true") != 0 && strcmp(s->value, "false") != 0)
				return sovmesh_fail(err, -EINVAL,
				                    "setting '%s': '%s' is not true or false",
				                    s->name, s->value);
			continue;
		case SOVMESH_SETTING_INT:
			v = (double)strtoll(s->value, &end, 10);
			break;
		case SOVMESH_SETTING_DOUBLE:
			v = strtod(s->value, &end);
			break;
		case SOVMESH_SETTING_STRING:
			continue;
		}
		if (end == s->value || *end != '\0' || errno || !isfinite(v))
			return sovmesh_fail(err, -EINVAL, "setting '%s': '%s' is not a number",
			                    s->name, s->value);
		if ((d->min != 0 || d->max != 0) && (v < d->min || v > d->max))
			return sovmesh_fail(err, -EINVAL, "setting '%s': %s is outside [%g, %g]",
			                    s->name, s->value, d->min, d->max);
	}
	return 0;
}

static const char *mh_node_name(sovmesh_host *host)
{
	(void)host;
	return "mini-host";
}

/* ---- tensor sets ---- */

static void mh_tensor_set_free(sovmesh_host *host, sovmesh_tensor_set *set)
{
	(void)host;
	if (!set)
		return;
	for (size_t i = 0; i < set->count; i++) {
		free((char *)set->tensors[i].name);
		free(set->tensors[i].data);
	}
	free(set->tensors);
	free((char *)set->metadata_json);
	free(set);
}

static int mh_tensor_init(sovmesh_host *host, sovmesh_tensor_set *set, size_t index,
                          const char *name, sovmesh_dtype dtype, uint32_t ndim,
                          const uint64_t *shape)
{
	(void)host;
	if (!set || index >= set->count || !name || sovmesh_dtype_size(dtype) == 0 ||
	    ndim > SOVMESH_TENSOR_MAX_DIMS || (ndim > 0 && !shape))
		return -EINVAL;
	sovmesh_tensor *t = &set->tensors[index];
	free((char *)t->name);
	free(t->data);
	memset(t, 0, sizeof(*t));
	t->dtype = dtype;
	t->ndim = ndim;
	for (uint32_t d = 0; d < ndim; d++)
		t->shape[d] = shape[d];
	t->nbytes = sovmesh_tensor_numel(t) * sovmesh_dtype_size(dtype);
	t->name = strdup(name);
	/* calloc(0) may return NULL; one spare byte keeps data non-NULL. */
	t->data = calloc(1, (size_t)t->nbytes + 1);
	if (!t->name || !t->data)
		return -ENOMEM;
	return 0;
}

static sovmesh_tensor_set *mh_tensor_set_new(sovmesh_host *host, const sovmesh_tensor_set *layout,
                                             size_t count)
{
	if (layout)
		count = layout->count;
	sovmesh_tensor_set *set = calloc(1, sizeof(*set));
	if (!set)
		return NULL;
	set->tensors = calloc(count ? count : 1, sizeof(*set->tensors));
	if (!set->tensors) {
		free(set);
		return NULL;
	}
	set->count = count;
	for (size_t i = 0; layout && i < count; i++) {
		const sovmesh_tensor *t = &layout->tensors[i];
		if (mh_tensor_init(host, set, i, t->name, t->dtype, t->ndim, t->shape) < 0) {
			mh_tensor_set_free(host, set);
			return NULL;
		}
	}
	return set;
}

sovmesh_tensor_set *mini_host_make_set(mini_host *mh, size_t count, const char *const *names,
                                       sovmesh_dtype dtype, const uint32_t *ndims,
                                       const uint64_t (*shapes)[SOVMESH_TENSOR_MAX_DIMS])
{
	sovmesh_tensor_set *set = mh_tensor_set_new(mh->host, NULL, count);
	for (size_t i = 0; set && i < count; i++) {
		if (mh_tensor_init(mh->host, set, i, names[i], dtype, ndims[i], shapes[i]) < 0) {
			mh_tensor_set_free(mh->host, set);
			set = NULL;
		}
	}
	return set;
}

/* ---- open / close ---- */

int mini_host_open(const char *file, const mini_setting *settings, mini_host **out,
                   sovmesh_error *err)
{
	*out = NULL;
	const char *dir = getenv("SOVMESH_BUILD_PLUGIN_DIR");
	if (!dir)
		return sovmesh_fail(err, -ENOENT, "SOVMESH_BUILD_PLUGIN_DIR is not set");
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s.so", dir, file);

	mini_host *mh = calloc(1, sizeof(*mh));
	struct sovmesh_host *handle = calloc(1, sizeof(*handle));
	if (!mh || !handle) {
		free(mh);
		free(handle);
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	}
	handle->mh = mh;
	mh->host = handle;
	mh->settings = settings;

	int rc;
	mh->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!mh->dl) {
		rc = sovmesh_fail(err, -ENOENT, "%s", dlerror());
		goto fail;
	}
	sovmesh_plugin_entry_fn entry;
	*(void **)&entry = dlsym(mh->dl, SOVMESH_PLUGIN_ENTRY_SYMBOL);
	if (!entry) {
		rc = sovmesh_fail(err, -ENOENT, "%s: no %s", path, SOVMESH_PLUGIN_ENTRY_SYMBOL);
		goto fail;
	}
	mh->desc = entry();
	if (!mh->desc || mh->desc->magic != SOVMESH_PLUGIN_MAGIC ||
	    mh->desc->abi_major != SOVMESH_ABI_MAJOR || mh->desc->abi_minor > SOVMESH_ABI_MINOR ||
	    !mh->desc->create || !mh->desc->ops) {
		rc = sovmesh_fail(err, -EINVAL, "%s: bad descriptor", path);
		goto fail;
	}
	rc = validate_settings(mh, err);
	if (rc < 0)
		goto fail;

	sovmesh_host_api *a = &mh->api;
	a->size = sizeof(*a);
	a->abi_major = SOVMESH_ABI_MAJOR;
	a->abi_minor = SOVMESH_ABI_MINOR;
	a->log = mh_log;
	a->vlog = mh_vlog;
	a->alloc = mh_alloc;
	a->calloc = mh_calloc;
	a->realloc = mh_realloc;
	a->free = mh_free;
	a->now_ms = mh_now_ms;
	a->wall_time = mh_wall_time;
	a->random_bytes = mh_random_bytes;
	a->setting_bool = mh_setting_bool;
	a->setting_int = mh_setting_int;
	a->setting_double = mh_setting_double;
	a->setting_string = mh_setting_string;
	a->node_name = mh_node_name;
	a->tensor_set_new = mh_tensor_set_new;
	a->tensor_init = mh_tensor_init;
	a->tensor_set_free = mh_tensor_set_free;

	sovmesh_error cerr = {0};
	rc = mh->desc->create(mh->host, &mh->api, &mh->instance, &cerr);
	if (rc < 0) {
		if (err)
			*err = cerr;
		mh->desc = NULL; /* destroy() must not be called */
		goto fail;
	}
	*out = mh;
	return 0;
fail:
	if (mh->dl)
		dlclose(mh->dl);
	free(mh->host);
	free(mh);
	return rc;
}

void mini_host_close(mini_host *mh)
{
	if (!mh)
		return;
	if (mh->desc && mh->desc->destroy)
		mh->desc->destroy(mh->instance);
	if (mh->dl)
		dlclose(mh->dl);
	free(mh->rng);
	free(mh->host);
	free(mh);
}
