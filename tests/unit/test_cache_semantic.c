/*
 * cache-semantic (plugins/cache-semantic), loaded as the built .so.
 *
 * mini_host has no plugin_state_dir and a wall clock the test cannot
 * set, and it calls create() inside mini_host_open, so this file has its
 * own small host (th_*): a state directory per test, a settable clock,
 * and every log line kept.  The plugin's index and built-in embedding
 * are compiled in as well, to check the int8 search against an exact
 * scan and hit similarities against embed_dot; SQLite writes the odd
 * database by hand.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include <sovmesh/cache.h>

#include "embed.h"
#include "index.h"

#define MAX_LOGS 64

typedef struct th {
	sovmesh_host_api api;
	const sovmesh_plugin_descriptor *desc;
	const sovmesh_cache_ops *ops;
	void *dl, *instance;
	const char *state_dir; /* what plugin_state_dir returns; may be NULL */
	int64_t now;
	int64_t ttl, max; /* settings; < 0: the descriptor's default */
	char logs[MAX_LOGS][700];
	int levels[MAX_LOGS];
	unsigned nlogs;
} th;

struct sovmesh_host {
	th *t;
};

static struct sovmesh_host handle;
static char tmpdir[256];

/* ---- the host ---- */

static void h_vlog(sovmesh_host *host, sovmesh_log_level level, const char *fmt, va_list ap)
{
	th *t = host->t;
	unsigned i = t->nlogs++ % MAX_LOGS;
	vsnprintf(t->logs[i], sizeof(t->logs[i]), fmt, ap);
	t->levels[i] = (int)level;
	if (getenv("MINI_HOST_VERBOSE") || level <= SOVMESH_LOG_WARNING)
		fprintf(stderr, "th: cache-semantic: %s\n", t->logs[i]);
}

static void h_log(sovmesh_host *host, sovmesh_log_level level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	h_vlog(host, level, fmt, ap);
	va_end(ap);
}

static void *h_alloc(sovmesh_host *host, size_t n)
{
	(void)host;
	return malloc(n);
}

static void *h_calloc(sovmesh_host *host, size_t n, size_t size)
{
	(void)host;
	return calloc(n, size);
}

static void *h_realloc(sovmesh_host *host, void *p, size_t n)
{
	(void)host;
	return realloc(p, n);
}

static void h_free(sovmesh_host *host, void *p)
{
	(void)host;
	free(p);
}

static int64_t h_wall_time(sovmesh_host *host)
{
	return host->t->now;
}

static uint64_t h_now_ms(sovmesh_host *host)
{
	return (uint64_t)host->t->now * 1000u;
}

static int64_t h_setting_int(sovmesh_host *host, const char *name)
{
	th *t = host->t;
	int64_t v = -1;
	if (strcmp(name, "ttl_secs") == 0)
		v = t->ttl;
	else if (strcmp(name, "max_entries") == 0)
		v = t->max;
	else
		fail_msg("the plugin read an unknown setting '%s'", name);
	if (v >= 0)
		return v;
	for (const sovmesh_setting_def *d = t->desc->settings; d && d->name; d++)
		if (strcmp(d->name, name) == 0)
			return strtoll(d->default_value, NULL, 10);
	fail_msg("setting '%s' is not declared", name);
	return 0;
}

static const char *h_state_dir(sovmesh_host *host)
{
	return host->t->state_dir;
}

/* Load the plugin and create an instance; rc of create(). */
static int th_try_open(th *t, sovmesh_error *err)
{
	const char *dir = getenv("SOVMESH_BUILD_PLUGIN_DIR");
	assert_non_null(dir);
	char path[4096];
	snprintf(path, sizeof(path), "%s/cache-semantic.so", dir);
	t->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!t->dl)
		fail_msg("%s", dlerror());
	sovmesh_plugin_entry_fn entry;
	*(void **)&entry = dlsym(t->dl, SOVMESH_PLUGIN_ENTRY_SYMBOL);
	assert_non_null(entry);
	t->desc = entry();
	assert_int_equal(t->desc->magic, SOVMESH_PLUGIN_MAGIC);
	assert_int_equal(t->desc->kind, SOVMESH_KIND_CACHE);
	assert_string_equal(t->desc->name, "semantic");
	t->ops = t->desc->ops;
	assert_int_equal(t->ops->size, sizeof(sovmesh_cache_ops));

	handle.t = t;
	sovmesh_host_api *a = &t->api;
	memset(a, 0, sizeof(*a));
	a->size = sizeof(*a);
	a->abi_major = SOVMESH_ABI_MAJOR;
	a->abi_minor = SOVMESH_ABI_MINOR;
	a->log = h_log;
	a->vlog = h_vlog;
	a->alloc = h_alloc;
	a->calloc = h_calloc;
	a->realloc = h_realloc;
	a->free = h_free;
	a->now_ms = h_now_ms;
	a->wall_time = h_wall_time;
	a->setting_int = h_setting_int;
	a->plugin_state_dir = h_state_dir;
	int rc = t->desc->create(&handle, a, &t->instance, err);
	if (rc < 0) {
		dlclose(t->dl);
		t->dl = NULL;
	}
	return rc;
}

/* A host on the test's state directory at time `now`. */
static th *th_open(int64_t now, int64_t ttl, int64_t max)
{
	th *t = calloc(1, sizeof(*t));
	assert_non_null(t);
	t->state_dir = tmpdir;
	t->now = now;
	t->ttl = ttl;
	t->max = max;
	sovmesh_error err = {0};
	if (th_try_open(t, &err) < 0)
		fail_msg("create failed: %s", err.message);
	return t;
}

static void th_close(th *t)
{
	if (!t)
		return;
	if (t->desc->destroy)
		t->desc->destroy(t->instance);
	if (t->dl)
		dlclose(t->dl);
	free(t);
}

/* The last log line at `level` or more severe containing every needle. */
static const char *th_logged(const th *t, int level, const char *n1, const char *n2)
{
	unsigned first = t->nlogs > MAX_LOGS ? t->nlogs - MAX_LOGS : 0;
	for (unsigned k = t->nlogs; k-- > first;) {
		unsigned i = k % MAX_LOGS;
		if (t->levels[i] <= level && strstr(t->logs[i], n1) &&
		    (!n2 || strstr(t->logs[i], n2)))
			return t->logs[i];
	}
	return NULL;
}

static int put(th *t, const char *model, const char *q, const char *a, const float *emb, size_t dim)
{
	sovmesh_cache_entry e = {
	    .size = sizeof(e),
	    .model = model,
	    .query = q,
	    .answer = a,
	    .embedding = emb,
	    .dim = dim,
	};
	sovmesh_error err = {0};
	int rc = t->ops->store(t->instance, &e, &err);
	if (rc < 0)
		assert_true(err.message[0] != '\0');
	return rc;
}

typedef struct got {
	int rc;
	char answer[256], query[256];
	double sim;
	int64_t created;
	sovmesh_error err;
} got;

static got get(th *t, const char *model, const char *q, const float *emb, size_t dim,
               double min_sim)
{
	sovmesh_cache_query cq = {
	    .size = sizeof(cq),
	    .model = model,
	    .query = q,
	    .embedding = emb,
	    .dim = dim,
	    .min_similarity = min_sim,
	};
	sovmesh_cache_hit hit = {.size = sizeof(hit)};
	got g = {0};
	g.rc = t->ops->lookup(t->instance, &cq, &hit, &g.err);
	if (g.rc == 1) {
		assert_non_null(hit.answer);
		assert_non_null(hit.query);
		snprintf(g.answer, sizeof(g.answer), "%s", hit.answer);
		snprintf(g.query, sizeof(g.query), "%s", hit.query);
		g.sim = hit.similarity;
		g.created = hit.created_unix;
	} else {
		assert_null(hit.answer);
		assert_null(hit.query);
	}
	free(hit.answer);
	free(hit.query);
	return g;
}

static sovmesh_cache_stats stats(th *t)
{
	sovmesh_cache_stats s = {.size = sizeof(s)};
	sovmesh_error err = {0};
	assert_int_equal(t->ops->stats(t->instance, &s, &err), 0);
	return s;
}

static char *db_path(const char *suffix)
{
	static char p[512];
	snprintf(p, sizeof(p), "%s/cache.db%s", tmpdir, suffix);
	return p;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static int setup(void **state)
{
	(void)state;
	const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	snprintf(tmpdir, sizeof(tmpdir), "%s/test_cache_semantic.XXXXXX", base);
	assert_non_null(mkdtemp(tmpdir));
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}

static double builtin_sim(const char *a, const char *b)
{
	float va[EMBED_BUILTIN_DIM], vb[EMBED_BUILTIN_DIM];
	embed_builtin(a, strlen(a), va);
	embed_builtin(b, strlen(b), vb);
	return embed_dot(va, vb, EMBED_BUILTIN_DIM);
}

/* ---- tests ---- */

static void test_same_question_hits(void **state)
{
	(void)state;
	th *t = th_open(1000, -1, -1);
	assert_int_equal(put(t, "llama3", "How do I boil an egg?", "Ten minutes.", NULL, 0), 0);
	got g = get(t, "llama3", "How do I boil an egg?", NULL, 0, 0);
	assert_int_equal(g.rc, 1);
	assert_string_equal(g.answer, "Ten minutes.");
	assert_string_equal(g.query, "How do I boil an egg?");
	assert_true(g.sim > 0.999 && g.sim <= 1.0);
	assert_int_equal(g.created, 1000);
	/* Storing the same question again replaces the answer. */
	t->now = 1010;
	assert_int_equal(put(t, "llama3", "How do I boil an egg?", "Eight minutes.", NULL, 0), 0);
	g = get(t, "llama3", "How do I boil an egg?", NULL, 0, 0);
	assert_int_equal(g.rc, 1);
	assert_string_equal(g.answer, "Eight minutes.");
	assert_int_equal(g.created, 1010);
	assert_int_equal(stats(t).entries, 1);
	/* No text above debug level. */
	for (unsigned i = 0; i < t->nlogs && i < MAX_LOGS; i++)
		if (t->levels[i] < SOVMESH_LOG_DEBUG)
			assert_null(strstr(t->logs[i], "boil"));
	th_close(t);
}

static void test_paraphrase_and_unrelated(void **state)
{
	(void)state;
	th *t = th_open(1000, -1, -1);
	const char *q = "How do I boil an egg?";
	const char *para = "how do you boil eggs";
	const char *other = "What is the capital of France?";
	assert_int_equal(put(t, "m", q, "Ten minutes.", NULL, 0), 0);
	assert_int_equal(put(t, "m", "Which wine goes with fish?", "A white one.", NULL, 0), 0);
	double want = builtin_sim(q, para);
	assert_true(want > 0.4);
	got g = get(t, "m", para, NULL, 0, 0.3);
	assert_int_equal(g.rc, 1);
	assert_string_equal(g.answer, "Ten minutes.");
	assert_string_equal(g.query, q);
	assert_float_equal(g.sim, want, 1e-4);
	assert_int_equal(get(t, "m", other, NULL, 0, 0.3).rc, 0);
	sovmesh_cache_stats s = stats(t);
	assert_int_equal(s.hits, 1);
	assert_int_equal(s.misses, 1);
	th_close(t);
}

static void test_other_model_misses(void **state)
{
	(void)state;
	th *t = th_open(1000, -1, -1);
	float v[3] = {1, 2, 3};
	assert_int_equal(put(t, "llama3", "Why is the sky blue?", "Rayleigh.", v, 3), 0);
	assert_int_equal(get(t, "mistral", "Why is the sky blue?", NULL, 0, 0).rc, 0);
	assert_int_equal(get(t, "mistral", "Why is the sky blue?", v, 3, 0).rc, 0);
	assert_int_equal(get(t, "llama3", "Why is the sky blue?", NULL, 0, 0).rc, 1);
	assert_int_equal(get(t, "llama3", "Why is the sky blue?", v, 3, 0).rc, 1);
	th_close(t);
}

static void test_model_embeddings(void **state)
{
	(void)state;
	th *t = th_open(1000, -1, -1);
	float e1[4] = {2, 0, 0, 0}; /* not normalised: the plugin does that */
	float e2[4] = {0, 0, 3, 0};
	float e5[5] = {1, 0, 0, 0, 0};
	assert_int_equal(put(t, "m", "first", "one", e1, 4), 0);
	assert_int_equal(put(t, "m", "second", "two", e2, 4), 0);
	assert_int_equal(put(t, "m", "third", "three", e5, 5), 0);
	assert_int_equal(put(t, "m", "fourth", "four", NULL, 0), 0);

	/* cos(q, e1) = 0.9 whatever the question text says */
	float q[4] = {0.9f * 5, (float)sqrt(1 - 0.81) * 5, 0, 0};
	got g = get(t, "m", "something else entirely", q, 4, 0.85);
	assert_int_equal(g.rc, 1);
	assert_string_equal(g.answer, "one");
	assert_float_equal(g.sim, 0.9, 1e-5);
	assert_int_equal(get(t, "m", "something else entirely", q, 4, 0.95).rc, 0);
	/* The 5-dim entry is never compared with 4-dim queries and back. */
	float q5[5] = {1, 0, 0, 0, 0};
	g = get(t, "m", "x", q5, 5, 0.99);
	assert_int_equal(g.rc, 1);
	assert_string_equal(g.answer, "three");
	float q3[3] = {1, 0, 0};
	assert_int_equal(get(t, "m", "first", q3, 3, 0.01).rc, 0);
	/* The entry without a model embedding is found by built-in only. */
	float qz[4] = {0, 0, 0, 1};
	assert_int_equal(get(t, "m", "fourth", qz, 4, 0.5).rc, 0);
	g = get(t, "m", "fourth", NULL, 0, 0);
	assert_int_equal(g.rc, 1);
	assert_string_equal(g.answer, "four");
	/* The default threshold is 0.80. */
	float q79[4] = {0.79f, (float)sqrt(1 - 0.79 * 0.79), 0, 0};
	float q81[4] = {0.81f, (float)sqrt(1 - 0.81 * 0.81), 0, 0};
	assert_int_equal(get(t, "m", "a", q79, 4, 0).rc, 0);
	assert_int_equal(get(t, "m", "a", q81, 4, 0).rc, 1);
	assert_int_equal(get(t, "m", "a", q81, 4, -1).rc, 1);
	/* A zero query vector is similar to nothing. */
	float zero[4] = {0};
	assert_int_equal(get(t, "m", "first", zero, 4, 0.01).rc, 0);
	th_close(t);
}

static void test_threshold(void **state)
{
	(void)state;
	th *t = th_open(1000, -1, -1);
	const char *q = "How do I boil an egg?", *p = "How long should I boil eggs for?";
	assert_int_equal(put(t, "m", q, "Ten minutes.", NULL, 0), 0);
	double s = builtin_sim(q, p);
	assert_true(s > 0.1 && s < 0.95);
	got g = get(t, "m", p, NULL, 0, s - 0.01);
	assert_int_equal(g.rc, 1);
	assert_float_equal(g.sim, s, 1e-4);
	assert_int_equal(get(t, "m", p, NULL, 0, s + 0.01).rc, 0);
	assert_int_equal(get(t, "m", q, NULL, 0, 1.5).rc, 0);
	th_close(t);
}

static void test_bad_input(void **state)
{
	(void)state;
	th *t = th_open(1000, -1, -1);
	float nan4[4] = {1, NAN, 0, 0};
	float ok[4] = {1, 0, 0, 0};
	assert_int_equal(put(t, "m", "q", NULL, NULL, 0), -EINVAL);
	assert_int_equal(put(t, NULL, "q", "a", NULL, 0), -EINVAL);
	assert_int_equal(put(t, "m", "q", "a", nan4, 4), -EINVAL);
	assert_int_equal(put(t, "m", "q", "a", ok, 0), -EINVAL);
	assert_int_equal(get(t, NULL, "q", NULL, 0, 0).rc, -EINVAL);
	got g = get(t, "m", "q", nan4, 4, 0);
	assert_int_equal(g.rc, -EINVAL);
	assert_non_null(strstr(g.err.message, "non-finite"));
	assert_int_equal(stats(t).entries, 0);
	th_close(t);
}

static void test_ttl(void **state)
{
	(void)state;
	th *t = th_open(1000, 100, -1);
	assert_int_equal(put(t, "m", "old question", "old answer", NULL, 0), 0);
	t->now = 1050;
	assert_int_equal(put(t, "m", "newer question", "newer answer", NULL, 0), 0);
	t->now = 1099;
	assert_int_equal(get(t, "m", "old question", NULL, 0, 0).rc, 1);
	t->now = 1100; /* 100 s old: expired, and deleted by the lookup */
	assert_int_equal(get(t, "m", "old question", NULL, 0, 0).rc, 0);
	assert_int_equal(stats(t).entries, 1);
	th_close(t);

	/* Deleted from the file too; a store sweeps as well. */
	t = th_open(1149, 100, -1);
	assert_int_equal(stats(t).entries, 1);
	t->now = 1150;
	assert_int_equal(put(t, "m", "third question", "third answer", NULL, 0), 0);
	assert_int_equal(stats(t).entries, 1);
	assert_int_equal(get(t, "m", "third question", NULL, 0, 0).rc, 1);
	th_close(t);
	/* Expired while the daemon was down: gone at create. */
	t = th_open(5000, 100, -1);
	assert_int_equal(stats(t).entries, 0);
	th_close(t);
	/* ttl 0: never expires. */
	t = th_open(1000, 0, -1);
	assert_int_equal(put(t, "m", "kept question", "kept", NULL, 0), 0);
	t->now = 1000 + 100LL * 365 * 86400;
	assert_int_equal(get(t, "m", "kept question", NULL, 0, 0).rc, 1);
	th_close(t);
}

static void test_lru(void **state)
{
	(void)state;
	th *t = th_open(1000, -1, 3);
	/* All in the same second: the order is kept in memory, not by clock. */
	assert_int_equal(put(t, "m", "alpha question", "A", NULL, 0), 0);
	assert_int_equal(put(t, "m", "bravo question", "B", NULL, 0), 0);
	assert_int_equal(put(t, "m", "charlie question", "C", NULL, 0), 0);
	assert_int_equal(get(t, "m", "alpha question", NULL, 0, 0.99).rc, 1);
	assert_int_equal(put(t, "m", "delta question", "D", NULL, 0), 0);
	sovmesh_cache_stats s = stats(t);
	assert_int_equal(s.entries, 3);
	assert_int_equal(s.evictions, 1);
	assert_int_equal(get(t, "m", "bravo question", NULL, 0, 0.99).rc, 0);
	assert_int_equal(get(t, "m", "alpha question", NULL, 0, 0.99).rc, 1);
	assert_int_equal(get(t, "m", "charlie question", NULL, 0, 0.99).rc, 1);
	assert_int_equal(get(t, "m", "delta question", NULL, 0, 0.99).rc, 1);
	/* Replacing an entry does not evict. */
	assert_int_equal(put(t, "m", "alpha question", "A2", NULL, 0), 0);
	assert_int_equal(stats(t).evictions, 1);
	th_close(t);

	/* Across a restart the order comes from last_used. */
	t = th_open(2000, -1, 3);
	assert_int_equal(get(t, "m", "charlie question", NULL, 0, 0.99).rc, 1);
	t->now = 2001;
	assert_int_equal(get(t, "m", "delta question", NULL, 0, 0.99).rc, 1);
	t->now = 2002;
	assert_int_equal(put(t, "m", "echo question", "E", NULL, 0), 0);
	assert_int_equal(get(t, "m", "alpha question", NULL, 0, 0.99).rc, 0);

	t->now = 2003;
	assert_int_equal(get(t, "m", "charlie question", NULL, 0, 0.99).rc, 1);
	th_close(t);

	/* A smaller max_entries at create evicts down to it. */
	t = th_open(3000, -1, 1);
	s = stats(t);
	assert_int_equal(s.entries, 1);
	assert_int_equal(s.evictions, 2);
	assert_int_equal(get(t, "m", "charlie question", NULL, 0, 0.99).rc, 1);
	th_close(t);
}

static void test_persistence(void **state)
{
	(void)state;
	th *t = th_open(1000, -1, -1);
	float v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
	assert_int_equal(put(t, "m", "Where is Paris?", "In France.", v, 8), 0);
	assert_int_equal(put(t, "m2", "Where is Rome?", "In Italy.", NULL, 0), 0);
	th_close(t);
	t = th_open(2000, -1, -1);
	assert_int_equal(stats(t).entries, 2);
	got g = get(t, "m", "Where is Paris?", NULL, 0, 0);
	assert_int_equal(g.rc, 1);
	assert_string_equal(g.answer, "In France.");
	assert_int_equal(g.created, 1000);
	g = get(t, "m", "unrelated", v, 8, 0.999);
	assert_int_equal(g.rc, 1);
	assert_string_equal(g.answer, "In France.");
	assert_int_equal(get(t, "m2", "Where is Rome?", NULL, 0, 0).rc, 1);
	th_close(t);
}

static void test_survives_kill(void **state)
{
	(void)state;
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(fds[0]);
		th *t = th_open(1000, -1, -1);
		int ok = put(t, "m", "Is this durable?", "Yes.", NULL, 0) == 0;
		if (write(fds[1], ok ? "y" : "n", 1) != 1)
			_exit(2);
		for (;;)
			pause(); /* killed here, without destroy() */
	}
	close(fds[1]);
	char c = 0;
	assert_int_equal(read(fds[0], &c, 1), 1);
	close(fds[0]);
	assert_int_equal(c, 'y');
	assert_int_equal(kill(pid, SIGKILL), 0);
	int status = 0;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status));
	/* The commit is in the WAL, not yet checkpointed. */
	struct stat sb;
	assert_int_equal(stat(db_path("-wal"), &sb), 0);
	assert_true(sb.st_size > 0);

	th *t = th_open(2000, -1, -1);
	got g = get(t, "m", "Is this durable?", NULL, 0, 0);
	assert_int_equal(g.rc, 1);
	assert_string_equal(g.answer, "Yes.");
	th_close(t);
}

static void write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	close(fd);
}

/* After a bad file was set aside: one error naming both files, the
 * aside file exists, and the cache works on an empty database. */
static void check_recovered(th *t, const char *reason)
{
	char aside[600];
	snprintf(aside, sizeof(aside), "%s.corrupt-%lld", db_path(""), (long long)t->now);
	const char *line = th_logged(t, SOVMESH_LOG_ERROR, db_path(""), aside);
	if (!line)
		fail_msg("no error line names %s and %s", db_path(""), aside);
	if (reason && !strstr(line, reason))
		fail_msg("the error line does not say '%s': %s", reason, line);
	struct stat sb;
	assert_int_equal(stat(aside, &sb), 0);
	assert_int_equal(stats(t).entries, 0);
	assert_int_equal(put(t, "m", "Does it work again?", "It does.", NULL, 0), 0);
	got g = get(t, "m", "Does it work again?", NULL, 0, 0);
	assert_int_equal(g.rc, 1);
	assert_string_equal(g.answer, "It does.");
}

static void test_garbage_database(void **state)
{
	(void)state;
	char junk[8192];
	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = (char)("this is not a database "[i % 23]);
	write_file(db_path(""), junk, sizeof(junk));
	write_file(db_path("-wal"), junk, 100);
	th *t = th_open(1234, -1, -1);
	check_recovered(t, "not a database");
	th_close(t);
	/* The stale -wal is not left beside the new database (SQLite drops
	 * an invalid one itself; a valid one is moved along). */
	char head[8] = {0};
	int fd = open(db_path("-wal"), O_RDONLY);
	if (fd >= 0) {
		assert_true(read(fd, head, sizeof(head)) >= 0);
		close(fd);
		assert_true(memcmp(head, "this is", 7) != 0);
	}
	/* ... and the new database persists. */
	t = th_open(1300, -1, -1);
	assert_int_equal(stats(t).entries, 1);
	th_close(t);
}

static void test_damaged_pages(void **state)
{
	(void)state;
	th *t = th_open(1000, -1, -1);
	char q[64], a[2048];
	memset(a, 'x', sizeof(a) - 1);
	a[sizeof(a) - 1] = '\0';
	for (int i = 0; i < 40; i++) {
		snprintf(q, sizeof(q), "question number %d", i);
		assert_int_equal(put(t, "m", q, a, NULL, 0), 0);
	}
	th_close(t); /* checkpoints everything into cache.db */
	struct stat sb;
	assert_int_equal(stat(db_path(""), &sb), 0);
	assert_true(sb.st_size > 16 * 4096);
	/* Overwrite pages 3..6 (b-tree pages) with noise. */
	int fd = open(db_path(""), O_WRONLY);
	assert_true(fd >= 0);
	char noise[4 * 4096];
	for (size_t i = 0; i < sizeof(noise); i++)
		noise[i] = (char)(i * 7 + 3);
	assert_int_equal(pwrite(fd, noise, sizeof(noise), 2 * 4096), (ssize_t)sizeof(noise));
	close(fd);
	t = th_open(2000, -1, -1);
	check_recovered(t, NULL);
	th_close(t);
}

static void test_future_schema(void **state)
{
	(void)state;
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(db_path(""), &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "CREATE TABLE entries (x); PRAGMA user_version = 99;",
	                              NULL, NULL, NULL),
	                 SQLITE_OK);
	sqlite3_close(db);
	th *t = th_open(1500, -1, -1);
	check_recovered(t, "newer");
	th_close(t);
}

static void test_foreign_database(void **state)
{
	(void)state;
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(db_path(""), &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db,
	                              "CREATE TABLE entries (x); INSERT INTO entries VALUES (1);"
	                              "PRAGMA user_version = 1;",
	                              NULL, NULL, NULL),
	                 SQLITE_OK);
	sqlite3_close(db);
	th *t = th_open(1600, -1, -1);
	check_recovered(t, "not a cache-semantic database");
	th_close(t);
}

static void test_disabled(void **state)
{
	(void)state;
	char missing[600];
	snprintf(missing, sizeof(missing), "%s/no/such/dir", tmpdir);
	th *t = calloc(1, sizeof(*t));
	assert_non_null(t);
	t->state_dir = missing;
	t->now = 1000;
	t->ttl = t->max = -1;
	sovmesh_error err = {0};
	assert_int_equal(th_try_open(t, &err), 0);
	assert_non_null(th_logged(t, SOVMESH_LOG_ERROR, missing, "disabled"));
	assert_int_equal(put(t, "m", "q", "a", NULL, 0), 0);
	assert_int_equal(get(t, "m", "q", NULL, 0, 0).rc, 0);
	unsigned before = t->nlogs;
	sovmesh_cache_stats s = stats(t);
	assert_int_equal(s.entries, 0);
	assert_int_equal(s.misses, 1);
	assert_true(t->nlogs > before);
	assert_non_null(th_logged(t, SOVMESH_LOG_WARNING, "disabled", missing));
	assert_int_equal(t->ops->clear(t->instance, &err), 0);
	th_close(t);
}

static void test_no_state_dir(void **state)
{
	(void)state;
	th *t = calloc(1, sizeof(*t));
	assert_non_null(t);
	t->state_dir = NULL;
	t->ttl = t->max = -1;
	sovmesh_error err = {0};
	assert_int_equal(th_try_open(t, &err), -ENOTSUP);
	assert_non_null(strstr(err.message, "state directory"));
	free(t);
}

static void test_store_fails_with_eio(void **state)
{
	(void)state;
	th *t = th_open(1000, -1, -1);
	assert_int_equal(put(t, "m", "first question", "first", NULL, 0), 0);
	/* Another connection holds the write lock past the busy timeout. */
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(db_path(""), &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
	sovmesh_cache_entry e = {
	    .size = sizeof(e), .model = "m", .query = "second question", .answer = "second"};
	sovmesh_error err = {0};
	assert_int_equal(t->ops->store(t->instance, &e, &err), -EIO);
	assert_non_null(strstr(err.message, db_path("")));
	assert_int_equal(stats(t).entries, 1);
	assert_int_equal(get(t, "m", "second question", NULL, 0, 0.99).rc, 0);
	assert_int_equal(get(t, "m", "first question", NULL, 0, 0.99).rc, 1);
	sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
	sqlite3_close(db);
	assert_int_equal(put(t, "m", "second question", "second", NULL, 0), 0);
	assert_int_equal(get(t, "m", "second question", NULL, 0, 0.99).rc, 1);
	th_close(t);
}

static void test_stats_clear(void **state)
{
	(void)state;
	th *t = th_open(1000, -1, -1);
	sovmesh_cache_stats s = stats(t);
	assert_int_equal(s.entries, 0);
	assert_int_equal(s.hits, 0);
	float v[16] = {1};
	for (int i = 0; i < 20; i++) {
		char q[64];
		snprintf(q, sizeof(q), "question %d about topic %d", i, i * 31);
		v[1] = (float)i;
		assert_int_equal(put(t, "m", q, "answer", v, 16), 0);
	}
	assert_int_equal(get(t, "m", "question 3 about topic 93", NULL, 0, 0.99).rc, 1);
	assert_int_equal(get(t, "m", "nothing like it", NULL, 0, 0.99).rc, 0);
	assert_int_equal(get(t, "other", "question 3 about topic 93", NULL, 0, 0).rc, 0);
	s = stats(t);
	assert_int_equal(s.entries, 20);
	assert_int_equal(s.hits, 1);
	assert_int_equal(s.misses, 2);
	assert_int_equal(s.evictions, 0);
	assert_true(s.bytes > 20 * EMBED_BUILTIN_DIM * sizeof(float));
	/* A short stats struct (an older host) gets only what it has room for. */
	struct {
		sovmesh_cache_stats s;
		uint64_t guard;
	} shortst = {.s = {.size = offsetof(sovmesh_cache_stats, hits)}, .guard = 7};
	sovmesh_error err = {0};
	assert_int_equal(t->ops->stats(t->instance, &shortst.s, &err), 0);
	assert_int_equal(shortst.s.entries, 20);
	assert_int_equal(shortst.s.hits, 0);
	assert_int_equal(shortst.guard, 7);

	assert_int_equal(t->ops->clear(t->instance, &err), 0);
	assert_int_equal(stats(t).entries, 0);
	assert_int_equal(get(t, "m", "question 3 about topic 93", NULL, 0, 0.5).rc, 0);
	th_close(t);
	t = th_open(1100, -1, -1);
	assert_int_equal(stats(t).entries, 0);
	assert_int_equal(put(t, "m", "after clear", "yes", NULL, 0), 0);
	assert_int_equal(get(t, "m", "after clear", NULL, 0, 0).rc, 1);
	th_close(t);
}

/* ---- the index on its own: the int8 search equals an exact scan ---- */

static uint64_t rng = 0x9e3779b97f4a7c15u;

static double rnd(void) /* uniform in [-1, 1) */
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (double)(rng >> 11) * 0x1p-52 - 1.0;
}

static void test_index_matches_exact_scan(void **state)
{
	(void)state;
	enum { N = 1500, D = 96, BD = 64, CL = 21 };
	vindex *fast = vindex_new(BD, 0), *exact = vindex_new(BD, 1);
	assert_non_null(fast);
	assert_non_null(exact);
	/* Clustered vectors: many rows close to each other and to the
	 * queries, so the bound keeps more than one candidate. */
	static float centers[CL][D], vecs[N][D], bvec[BD];
	for (int c = 0; c < CL; c++)
		for (int i = 0; i < D; i++)
			centers[c][i] = (float)rnd();
	for (int k = 0; k < N; k++) {
		for (int i = 0; i < D; i++)
			vecs[k][i] = centers[k % CL][i] + 0.15f * (float)rnd();
		vindex_normalize(vecs[k], D);
		for (int i = 0; i < BD; i++)
			bvec[i] = (float)rnd();
		vindex_normalize(bvec, BD);
		vindex_item it = {.id = 100 + k,
		                  .model = k % 2 ? "a" : "b",
		                  .created = k,
		                  .last_used = k,
		                  .builtin = bvec,
		                  .mvec = vecs[k],
		                  .mdim = D};
		assert_int_equal(vindex_add(fast, &it, NULL), 0);
		assert_int_equal(vindex_add(exact, &it, NULL), 0);
	}
	/* Remove a third (rows move around) in both. */
	for (int k = 0; k < N; k += 3) {
		vindex_remove(fast, vindex_find(fast, 100 + k));
		vindex_remove(exact, vindex_find(exact, 100 + k));
	}
	assert_int_equal(vindex_count(fast), N - N / 3);
	assert_int_equal(vindex_find(fast, 100), VINDEX_NONE);
	assert_int_not_equal(vindex_find(fast, 101), VINDEX_NONE);

	int hits = 0;
	for (int r = 0; r < 300; r++) {
		float q[D];
		for (int i = 0; i < D; i++)
			q[i] = centers[r % CL][i] + 0.2f * (float)rnd();
		float thr = r % 2 ? 1e-6f : 0.9f;
		vindex_hit a = {0}, b = {0};
		int ra = vindex_search(fast, "a", q, D, thr, &a);
		int rb = vindex_search(exact, "a", q, D, thr, &b);
		assert_int_equal(ra, rb);
		if (ra == 1) {
			hits++;
			assert_int_equal(a.id, b.id);
			assert_float_equal(a.similarity, b.similarity, 1e-5);
			assert_true((a.id - 100) % 3 != 0); /* not a removed one */
			assert_true((a.id - 100) % 2 == 1); /* of model "a" */
		}
	}
	assert_true(hits > 150);
	/* Lists: LRU follows touches, age follows created. */
	uint32_t h = vindex_find(fast, 101);
	vindex_touch(fast, h, 99999);
	uint32_t last = VINDEX_NONE;
	for (uint32_t x = vindex_lru_first(fast); x != VINDEX_NONE; x = vindex_lru_next(fast, x))
		last = x;
	assert_int_equal(last, h);
	int64_t prev = -1;
	size_t n = 0;
	for (uint32_t x = vindex_age_first(fast); x != VINDEX_NONE; x = vindex_age_next(fast, x)) {
		assert_true(vindex_created(fast, x) >= prev);
		prev = vindex_created(fast, x);
		n++;
	}
	assert_int_equal(n, vindex_count(fast));
	vindex_free(fast);
	vindex_free(exact);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_same_question_hits, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_paraphrase_and_unrelated, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_other_model_misses, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_model_embeddings, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_threshold, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bad_input, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_ttl, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_lru, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_persistence, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_survives_kill, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_garbage_database, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_damaged_pages, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_future_schema, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_foreign_database, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_disabled, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_no_state_dir, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_store_fails_with_eio, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_stats_clear, setup, teardown),
	    cmocka_unit_test(test_index_matches_exact_scan),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
