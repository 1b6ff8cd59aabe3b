/*
 * The daemon's configuration: a schema table (below) drives defaults,
 * type and range checks, and where each value lands in sovmesh_config.
 * Errors are one line "FILE:LINE: KEY: reason" with KEY the dotted path.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "hostport.h"
#include "log.h"

extern const char config_default_text_data[];

#define EMBEDDED_NAME "<embedded default>"
/* Config files are a few KiB; anything this big is the wrong file. */
#define MAX_CONFIG_BYTES (1024 * 1024)
/* discovery.h: the announced node name is at most 63 bytes. */
#define MAX_NODE_NAME   63
#define MAX_PLUGIN_NAME 64

enum key_type {
	KT_GROUP,      /* a fixed group whose children are in the schema */
	KT_FREE_GROUP, /* plugin_settings: children are plugin labels */
	KT_BOOL,
	KT_INT,
	KT_FLOAT,
	KT_STRING,
	KT_STRING_LIST,
};

/* Checks beyond type and numeric range. */
enum key_check {
	CHECK_NONE,
	CHECK_LOG_LEVEL,    /* string -> int log level */
	CHECK_ACCOUNTANT,   /* "basic" | "rdp" */
	CHECK_PLUGIN_NAME,  /* [a-z0-9][a-z0-9_]*; aux is the file prefix */
	CHECK_PLUGIN_NAMES, /* "" or comma-separated plugin names; aux as above */
	CHECK_OPT_PLUGIN_NAME, /* "" (none) or one plugin name; aux as above */
	CHECK_ABS_PATH,     /* "" or absolute */
	CHECK_ABS_PATHS,    /* every list element absolute */
	CHECK_NODE_NAME,    /* "" or 1..63 bytes of UTF-8 without controls */
	CHECK_SOCKET_PATH,  /* "" or absolute and fits sockaddr_un */
	CHECK_LISTEN_ADDR,  /* numeric host:port, port 0 = any free port */
};

#define NO_FIELD ((size_t)-1)
#define FIELD(f) offsetof(sovmesh_config, f)

typedef struct key_def {
	const char *path;
	enum key_type type;
	const char *def; /* default as text; lists default to empty */
	bool ranged;     /* numbers: check [min, max] ... */
	bool min_open;   /* ... or (min, max] */
	double min, max;
	enum key_check check;
	const char *aux;  /* CHECK_PLUGIN_NAME: the file prefix */
	size_t field;     /* offset in sovmesh_config */
	size_t len_field; /* lists: offset of the size_t length */
} key_def;

/* Thresholds picked on tests/data/paraphrase_pairs.tsv (docs/cache-thresholds.md;
 * tests/unit/test_cache_thresholds.c checks the built-in ones). */
#define CACHE_HIT_DEFAULT        "0.83"
#define CACHE_NEAR_DEFAULT       "0.43"
#define CACHE_MODEL_HIT_DEFAULT  "0.92"
#define CACHE_MODEL_NEAR_DEFAULT "0.75"
#define TEMPLATE_TEXT_DEFAULT                                                              \
	"I'm currently limited: neither this device's model nor any paired device can " \
	"answer right now. Please try again in a few minutes."
#define TEMPLATE_NEAR_DEFAULT                                                              \
	"I'm currently limited, but here's what I know from an earlier answer to a "    \
	"similar question ({question}): {answer}"

/* Every key; docs/configuration.md describes each one and
 * config_default.conf must agree with the defaults (test_config.c). */
// clang-format off
static const key_def schema[] = {
/*   path                                       type            default    range                 check              aux          field */
    {"node",                                    KT_GROUP,       NULL,      0, 0, 0, 0,           CHECK_NONE,        NULL,        NO_FIELD, 0},
    {"node.name",                               KT_STRING,      "",        0, 0, 0, 0,           CHECK_NODE_NAME,   NULL,        FIELD(node_name), 0},
    {"node.state_dir",                          KT_STRING,      "",        0, 0, 0, 0,           CHECK_ABS_PATH,    NULL,        FIELD(state_dir), 0},
    {"node.log_level",                          KT_STRING,      "info",    0, 0, 0, 0,           CHECK_LOG_LEVEL,   NULL,        FIELD(log_level), 0},
    {"node.plugin_path",                        KT_STRING_LIST, NULL,      0, 0, 0, 0,           CHECK_ABS_PATHS,   NULL,        FIELD(plugin_path), FIELD(plugin_path_len)},

    {"control",                                 KT_GROUP,       NULL,      0, 0, 0, 0,           CHECK_NONE,        NULL,        NO_FIELD, 0},
    {"control.socket",                          KT_STRING,      "",        0, 0, 0, 0,           CHECK_SOCKET_PATH, NULL,        FIELD(control_socket), 0},

    {"mesh",                                    KT_GROUP,       NULL,      0, 0, 0, 0,           CHECK_NONE,        NULL,        NO_FIELD, 0},
    {"mesh.enabled",                            KT_BOOL,        "true",    0, 0, 0, 0,           CHECK_NONE,        NULL,        FIELD(mesh_enabled), 0},
    {"mesh.discovery",                          KT_STRING,      "mdns",    0, 0, 0, 0,           CHECK_PLUGIN_NAMES, "discovery", FIELD(mesh_discovery), 0},
    {"mesh.thermal_limit_c",                    KT_FLOAT,       "80.0",    1, 0, 30, 120,        CHECK_NONE,        NULL,        FIELD(thermal_limit_c), 0},
    {"mesh.thermal_sysfs_root",                 KT_STRING,      "/sys",    0, 0, 0, 0,           CHECK_ABS_PATH,    NULL,        FIELD(thermal_sysfs_root), 0},
    {"mesh.health_interval_ms",                 KT_INT,         "3000",    1, 0, 100, 600000,    CHECK_NONE,        NULL,        FIELD(health_interval_ms), 0},
    {"mesh.serve_inference",                    KT_BOOL,        "true",    0, 0, 0, 0,           CHECK_NONE,        NULL,        FIELD(serve_inference), 0},
    {"mesh.max_concurrent_peer_requests",       KT_INT,         "2",       1, 0, 0, 1024,        CHECK_NONE,        NULL,        FIELD(max_concurrent_peer_requests), 0},
    {"mesh.peer_listen",                        KT_STRING,      "0.0.0.0:47470", 0, 0, 0, 0,     CHECK_LISTEN_ADDR, NULL,        FIELD(peer_listen), 0},
    {"mesh.request_timeout_secs",               KT_INT,         "60",      1, 0, 1, 3600,        CHECK_NONE,        NULL,        FIELD(request_timeout_secs), 0},

    {"api",                                     KT_GROUP,       NULL,      0, 0, 0, 0,           CHECK_NONE,        NULL,        NO_FIELD, 0},
    {"api.enabled",                             KT_BOOL,        "true",    0, 0, 0, 0,           CHECK_NONE,        NULL,        FIELD(api_enabled), 0},
    {"api.listen",                              KT_STRING,      "127.0.0.1:11435", 0, 0, 0, 0,   CHECK_LISTEN_ADDR, NULL,        FIELD(api_listen), 0},
    {"api.max_body_bytes",                      KT_INT,         "33554432", 1, 0, 4096, 1073741824, CHECK_NONE,     NULL,        FIELD(api_max_body_bytes), 0},

    {"inference",                               KT_GROUP,       NULL,      0, 0, 0, 0,           CHECK_NONE,        NULL,        NO_FIELD, 0},
    {"inference.backend",                       KT_STRING,      "ollama",  0, 0, 0, 0,           CHECK_OPT_PLUGIN_NAME, "backend",  FIELD(inference_backend), 0},
    {"inference.default_model",                 KT_STRING,      "",        0, 0, 0, 0,           CHECK_NONE,        NULL,        FIELD(inference_default_model), 0},

    {"cache",                                   KT_GROUP,       NULL,      0, 0, 0, 0,           CHECK_NONE,        NULL,        NO_FIELD, 0},
    {"cache.enabled",                           KT_BOOL,        "true",    0, 0, 0, 0,           CHECK_NONE,        NULL,        FIELD(cache_enabled), 0},
    {"cache.plugin",                            KT_STRING,      "semantic", 0, 0, 0, 0,          CHECK_OPT_PLUGIN_NAME, "cache", FIELD(cache_plugin), 0},
    {"cache.embedding_model",                   KT_STRING,      "",        0, 0, 0, 0,           CHECK_NONE,        NULL,        FIELD(cache_embedding_model), 0},
    {"cache.hit_similarity",                    KT_FLOAT,       CACHE_HIT_DEFAULT, 1, 0, 0, 1,   CHECK_NONE,        NULL,        FIELD(cache_hit_similarity), 0},
    {"cache.near_miss_similarity",              KT_FLOAT,       CACHE_NEAR_DEFAULT, 1, 0, 0, 1,  CHECK_NONE,        NULL,        FIELD(cache_near_miss_similarity), 0},
    {"cache.model_hit_similarity",              KT_FLOAT,       CACHE_MODEL_HIT_DEFAULT, 1, 0, 0, 1, CHECK_NONE,    NULL,        FIELD(cache_model_hit_similarity), 0},
    {"cache.model_near_miss_similarity",        KT_FLOAT,       CACHE_MODEL_NEAR_DEFAULT, 1, 0, 0, 1, CHECK_NONE,   NULL,        FIELD(cache_model_near_miss_similarity), 0},

    {"template",                                KT_GROUP,       NULL,      0, 0, 0, 0,           CHECK_NONE,        NULL,        NO_FIELD, 0},
    {"template.enabled",                        KT_BOOL,        "true",    0, 0, 0, 0,           CHECK_NONE,        NULL,        FIELD(template_enabled), 0},
    {"template.text",                           KT_STRING,      TEMPLATE_TEXT_DEFAULT, 0, 0, 0, 0, CHECK_NONE,      NULL,        FIELD(template_text), 0},
    {"template.near_miss_text",                 KT_STRING,      TEMPLATE_NEAR_DEFAULT, 0, 0, 0, 0, CHECK_NONE,      NULL,        FIELD(template_near_miss_text), 0},

    {"pairing",                                 KT_GROUP,       NULL,      0, 0, 0, 0,           CHECK_NONE,        NULL,        NO_FIELD, 0},
    {"pairing.listen",                          KT_STRING,      "0.0.0.0:47471", 0, 0, 0, 0,     CHECK_LISTEN_ADDR, NULL,        FIELD(pairing_listen), 0},
    {"pairing.code_ttl_secs",                   KT_INT,         "600",     1, 0, 1, 86400,       CHECK_NONE,        NULL,        FIELD(pairing_code_ttl_secs), 0},
    {"pairing.max_attempts",                    KT_INT,         "5",       1, 0, 1, 20,          CHECK_NONE,        NULL,        FIELD(pairing_max_attempts), 0},

    {"federated_learning",                      KT_GROUP,       NULL,      0, 0, 0, 0,           CHECK_NONE,        NULL,        NO_FIELD, 0},
    {"federated_learning.enabled",              KT_BOOL,        "true",    0, 0, 0, 0,           CHECK_NONE,        NULL,        FIELD(fl_enabled), 0},
    {"federated_learning.sync_after_n_samples", KT_INT,         "5",       1, 0, 1, 1000000,     CHECK_NONE,        NULL,        FIELD(sync_after_n_samples), 0},
    {"federated_learning.max_peers",            KT_INT,         "10",      1, 0, 1, 1000,        CHECK_NONE,        NULL,        FIELD(max_peers), 0},
    {"federated_learning.noise_epsilon",        KT_FLOAT,       "1.0",     1, 1, 0, 100,         CHECK_NONE,        NULL,        FIELD(noise_epsilon), 0},
    {"federated_learning.aggregation_method",   KT_STRING,      "fedavg",  0, 0, 0, 0,           CHECK_PLUGIN_NAME, "agg",       FIELD(aggregation_method), 0},
    {"federated_learning.noise_mechanism",      KT_STRING,      "laplace", 0, 0, 0, 0,           CHECK_PLUGIN_NAME, "dp",        FIELD(noise_mechanism), 0},
    {"federated_learning.noise_clip",           KT_FLOAT,       "1.0",     1, 1, 0, 1e6,         CHECK_NONE,        NULL,        FIELD(noise_clip), 0},
    {"federated_learning.noise_delta",          KT_FLOAT,       "0.0",     1, 0, 0, 0.1,         CHECK_NONE,        NULL,        FIELD(noise_delta), 0},
    {"federated_learning.accountant",           KT_STRING,      "basic",   0, 0, 0, 0,           CHECK_ACCOUNTANT,  NULL,        FIELD(fl_accountant), 0},
    {"federated_learning.target_delta",         KT_FLOAT,       "1e-6",    1, 1, 0, 0.1,         CHECK_NONE,        NULL,        FIELD(target_delta), 0},
    {"federated_learning.allow_no_noise",       KT_BOOL,        "false",   0, 0, 0, 0,           CHECK_NONE,        NULL,        FIELD(allow_no_noise), 0},
    {"federated_learning.privacy_budget",       KT_FLOAT,       "10.0",    1, 1, 0, 1e6,         CHECK_NONE,        NULL,        FIELD(privacy_budget), 0},
    {"federated_learning.trainer",              KT_STRING,      "reference", 0, 0, 0, 0,         CHECK_PLUGIN_NAME, "trainer",   FIELD(fl_trainer), 0},
    {"federated_learning.train_timeout_secs",   KT_INT,         "3600",    1, 0, 1, 604800,      CHECK_NONE,        NULL,        FIELD(train_timeout_secs), 0},
    {"federated_learning.aggregation_wait_secs", KT_INT,        "60",      1, 0, 0, 86400,       CHECK_NONE,        NULL,        FIELD(aggregation_wait_secs), 0},
    {"federated_learning.max_delta_bytes",      KT_INT,         "67108864", 1, 0, 1024, 1073741824, CHECK_NONE,     NULL,        FIELD(max_delta_bytes), 0},
    {"federated_learning.base_model",           KT_STRING,      "",        0, 0, 0, 0,           CHECK_NONE,        NULL,        FIELD(fl_base_model), 0},
    {"federated_learning.adapted_model",        KT_STRING,      "",        0, 0, 0, 0,           CHECK_NONE,        NULL,        FIELD(fl_adapted_model), 0},

    /* Children are plugin labels, checked against each plugin's
     * declared settings when it loads (plugin_settings.c). */
    {"plugin_settings",                         KT_FREE_GROUP,  NULL,      0, 0, 0, 0,           CHECK_NONE,        NULL,        NO_FIELD, 0},
};
// clang-format on

#define N_KEYS (sizeof(schema) / sizeof(schema[0]))

/* Where errors are reported: the file name for settings that carry none
 * (libconfig records names only for @include'd files here). */
typedef struct load_ctx {
	const char *name;
	const char *include_dir; /* may be NULL */
	sovmesh_error *err;
} load_ctx;

static int fail_at(const load_ctx *ctx, const config_setting_t *s, const char *key, const char *fmt,
                   ...) SOVMESH_PRINTF(4, 5);
static int fail_at(const load_ctx *ctx, const config_setting_t *s, const char *key, const char *fmt,
                   ...)
{
	char reason[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	const char *file = s ? config_setting_source_file(s) : NULL;
	const char *dir = "";
	if (!file)
		file = ctx->name;
	else if (file[0] != '/' && ctx->include_dir)
		dir = ctx->include_dir; /* libconfig keeps @include names as written */
	unsigned line = s ? config_setting_source_line(s) : 0;
	if (line)
		return sovmesh_fail(ctx->err, -EINVAL, "%s%s%s:%u: %s: %s", dir, *dir ? "/" : "",
		                    file, line, key, reason);
	return sovmesh_fail(ctx->err, -EINVAL, "%s%s%s: %s: %s", dir, *dir ? "/" : "", file, key,
	                    reason);
}

static int fail_oom(sovmesh_error *err)
{
	return sovmesh_fail(err, -ENOMEM, "out of memory while loading the configuration");
}

static const key_def *find_key(const char *path)
{
	for (size_t i = 0; i < N_KEYS; i++)
		if (strcmp(schema[i].path, path) == 0)
			return &schema[i];
	return NULL;
}

static const char *leaf_of(const char *path)
{
	const char *dot = strrchr(path, '.');
	return dot ? dot + 1 : path;
}

/* Is `path` a direct child of `parent` ("" for the root)? */
static bool is_child_of(const char *path, const char *parent)
{
	size_t n = strlen(parent);
	if (n == 0)
		return strchr(path, '.') == NULL;
	return strncmp(path, parent, n) == 0 && path[n] == '.' && !strchr(path + n + 1, '.');
}

static size_t edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	if (la > 64 || lb > 64)
		return SIZE_MAX;
	size_t row[65];
	for (size_t j = 0; j <= lb; j++)
		row[j] = j;
	for (size_t i = 1; i <= la; i++) {
		size_t diag = row[0];
		row[0] = i;
		for (size_t j = 1; j <= lb; j++) {
			size_t up = row[j];
			size_t best = diag + (a[i - 1] != b[j - 1]);
			if (up + 1 < best)
				best = up + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			row[j] = best;
			diag = up;
		}
	}
	return row[lb];
}

/* "; did you mean 'X'?" for an unknown `name` under `parent`, or "".  A
 * near miss among siblings is named by its leaf; the same name in another
 * group by its full path (a key put in the wrong group). */
static void suggest(const char *parent, const char *name, char *buf, size_t len)
{
	buf[0] = '\0';
	const key_def *best = NULL;
	size_t best_d = strlen(name) / 4 + 1;
	if (best_d > 3)
		best_d = 3;
	for (size_t i = 0; i < N_KEYS; i++) {
		if (!is_child_of(schema[i].path, parent))
			continue;
		size_t d = edit_distance(name, leaf_of(schema[i].path));
		if (d <= best_d) {
			best_d = d;
			best = &schema[i];
		}
	}
	if (best) {
		snprintf(buf, len, "; did you mean '%s'?", leaf_of(best->path));
		return;
	}
	for (size_t i = 0; i < N_KEYS; i++) {
		if (strcmp(leaf_of(schema[i].path), name) == 0) {
			snprintf(buf, len, "; did you mean '%s'?", schema[i].path);
			return;
		}
	}
}

/* Shortest text that reads back as v ("0.1", not "0.10000000000000001"). */
static const char *fmt_num(char *buf, size_t len, double v)
{
	if (v == floor(v) && fabs(v) < 1e15) {
		snprintf(buf, len, "%.0f", v);
		return buf;
	}
	for (int prec = 6; prec <= 17; prec++) {
		snprintf(buf, len, "%.*g", prec, v);
		if (strtod(buf, NULL) == v)
			break;
	}
	return buf;
}

static const char *expected_name(enum key_type t)
{
	switch (t) {
	case KT_GROUP:
	case KT_FREE_GROUP:
		return "a group { ... }";
	case KT_BOOL:
		return "true or false";
	case KT_INT:
		return "an integer";
	case KT_FLOAT:
		return "a number";
	case KT_STRING:
		return "a string";
	case KT_STRING_LIST:
		return "a list of strings [ \"...\", ... ]";
	}
	return "?";
}

/* What the user wrote, for "got ..." */
static const char *got_name(const config_setting_t *s, char *buf, size_t len)
{
	switch (config_setting_type(s)) {
	case CONFIG_TYPE_INT:
	case CONFIG_TYPE_INT64:
		return "an integer";
	case CONFIG_TYPE_FLOAT:
		return fmt_num(buf, len, config_setting_get_float(s));
	case CONFIG_TYPE_STRING:
		return "a string";
	case CONFIG_TYPE_BOOL:
		return "a boolean";
	case CONFIG_TYPE_GROUP:
		return "a group";
	case CONFIG_TYPE_ARRAY:
		return "an array";
	case CONFIG_TYPE_LIST:
		return "a list";
	}
	return "an unknown value";
}

static int fail_type(const load_ctx *ctx, const config_setting_t *s, const char *key,
                     enum key_type want)
{
	char buf[64];
	return fail_at(ctx, s, key, "expected %s, got %s", expected_name(want),
	               got_name(s, buf, sizeof(buf)));
}

static bool is_plugin_name(const char *s)
{
	if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9')))
		return false;
	for (const char *p = s; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
			return false;
	return strlen(s) <= MAX_PLUGIN_NAME;
}

/* "<kind>-<name>": [a-z]+-[a-z0-9][a-z0-9_]* */
static bool is_plugin_label(const char *s)
{
	const char *p = s;
	while (*p >= 'a' && *p <= 'z')
		p++;
	return p > s && *p == '-' && is_plugin_name(p + 1);
}

/* Well-formed UTF-8 without control characters (the name is announced
 * on the network and shown in UIs). */
static bool is_clean_utf8(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	while (*p) {
		unsigned c = *p;
		size_t n;
		unsigned cp;
		if (c < 0x20 || c == 0x7f)
			return false;
		if (c < 0x80) {
			p++;
			continue;
		} else if ((c & 0xe0) == 0xc0) {
			n = 1;
			cp = c & 0x1f;
		} else if ((c & 0xf0) == 0xe0) {
			n = 2;
			cp = c & 0x0f;
		} else if ((c & 0xf8) == 0xf0) {
			n = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		for (size_t i = 1; i <= n; i++) {
			if ((p[i] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (p[i] & 0x3f);
		}
		/* Overlong forms, surrogates and beyond U+10FFFF. */
		if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
		    (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff || (cp >= 0x80 && cp < 0xa0))
			return false;
		p += n + 1;
	}
	return true;
}

static int check_string(const load_ctx *ctx, const key_def *k, const config_setting_t *s,
                        const char *v)
{
	switch (k->check) {
	case CHECK_NONE:
	case CHECK_ABS_PATHS:
		return 0;
	case CHECK_LOG_LEVEL:
		if (log_level_parse(v) < 0)
			return fail_at(ctx, s, k->path,
			               "unknown log level '%s'; expected one of error, warning, "
			               "notice, info, debug",
			               v);
		return 0;
	case CHECK_ACCOUNTANT:
		if (strcmp(v, "basic") != 0 && strcmp(v, "rdp") != 0)
			return fail_at(ctx, s, k->path,
			               "unknown accountant '%s'; expected \"basic\" (add up ε) or "
			               "\"rdp\" (Rényi DP for Laplace and Gaussian noise)",
			               v);
		return 0;
	case CHECK_OPT_PLUGIN_NAME:
		if (!*v)
			return 0;
		/* fall through */
	case CHECK_PLUGIN_NAME:
		if (!is_plugin_name(v))
			return fail_at(
			    ctx, s, k->path,
			    "'%s' is not a plugin name: it must match [a-z0-9][a-z0-9_]* "
			    "and be at most %d characters (it names the file %s-NAME.so)",
			    v, MAX_PLUGIN_NAME, k->aux);
		return 0;
	case CHECK_PLUGIN_NAMES: {
		/* Several discovery plugins may run at once: "mdns, static". */
		char buf[512];
		snprintf(buf, sizeof(buf), "%s", v);
		char *save = NULL;
		for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
			while (*tok == ' ')
				tok++;
			size_t n = strlen(tok);
			while (n > 0 && tok[n - 1] == ' ')
				tok[--n] = '\0';
			if (!is_plugin_name(tok))
				return fail_at(
				    ctx, s, k->path,
				    "'%s' is not a plugin name: each comma-separated name "
				    "must match [a-z0-9][a-z0-9_]* (it names the file "
				    "%s-NAME.so)",
				    tok, k->aux);
		}
		return 0;
	}
	case CHECK_ABS_PATH:
		if (*v && *v != '/')
			return fail_at(ctx, s, k->path, "must be an absolute path, got '%s'", v);
		return 0;
	case CHECK_SOCKET_PATH:
		if (*v && *v != '/')
			return fail_at(ctx, s, k->path, "must be an absolute path, got '%s'", v);
		if (strlen(v) >= sizeof(((struct sockaddr_un *)0)->sun_path))
			return fail_at(ctx, s, k->path,
			               "is %zu bytes long; a Unix socket path may have at most %zu",
			               strlen(v), sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
		return 0;
	case CHECK_LISTEN_ADDR: {
		hostport hp;
		const char *why = NULL;
		if (hostport_parse(v, 1, &hp, &why) < 0)
			return fail_at(ctx, s, k->path, "'%s' is not a listen address: %s", v, why);
		return 0;
	}
	case CHECK_NODE_NAME:
		if (strlen(v) > MAX_NODE_NAME)
			return fail_at(ctx, s, k->path, "is %zu bytes long; at most %d are allowed",
			               strlen(v), MAX_NODE_NAME);
		if (!is_clean_utf8(v))
			return fail_at(ctx, s, k->path,
			               "must be UTF-8 text without control characters");
		return 0;
	}
	return 0;
}

static int check_range(const load_ctx *ctx, const key_def *k, const config_setting_t *s, double v)
{
	if (!k->ranged)
		return 0;
	bool low_ok = k->min_open ? v > k->min : v >= k->min;
	if (low_ok && v <= k->max && isfinite(v))
		return 0;
	char lo[40], hi[40], got[40];
	fmt_num(lo, sizeof(lo), k->min);
	fmt_num(hi, sizeof(hi), k->max);
	fmt_num(got, sizeof(got), v);
	if (k->min_open)
		return fail_at(ctx, s, k->path, "must be greater than %s and at most %s, got %s",
		               lo, hi, got);
	return fail_at(ctx, s, k->path, "must be between %s and %s, got %s", lo, hi, got);
}

static void *field_ptr(sovmesh_config *cfg, size_t off)
{
	return (char *)cfg + off;
}

static int set_string_field(sovmesh_config *cfg, const key_def *k, const char *v,
                            sovmesh_error *err)
{
	if (k->check == CHECK_LOG_LEVEL) {
		*(int *)field_ptr(cfg, k->field) = log_level_parse(v);
		return 0;
	}
	char *copy = strdup(v);
	if (!copy)
		return fail_oom(err);
	char **slot = field_ptr(cfg, k->field);
	free(*slot);
	*slot = copy;
	return 0;
}

static void free_list(char **list)
{
	if (!list)
		return;
	for (char **p = list; *p; p++)
		free(*p);
	free(list);
}

static int apply_list(const load_ctx *ctx, sovmesh_config *cfg, const key_def *k,
                      const config_setting_t *s)
{
	int n = config_setting_length(s);
	char **list = calloc((size_t)n + 1, sizeof(*list));
	if (!list)
		return fail_oom(ctx->err);
	for (int i = 0; i < n; i++) {
		const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
		char key[160];
		snprintf(key, sizeof(key), "%s[%d]", k->path, i);
		int r = 0;
		if (config_setting_type(e) != CONFIG_TYPE_STRING)
			r = fail_type(ctx, e, key, KT_STRING);
		const char *v = r ? NULL : config_setting_get_string(e);
		if (!r && k->check == CHECK_ABS_PATHS && v[0] != '/')
			r = fail_at(ctx, e, key, "must be an absolute path, got '%s'", v);
		if (!r && !(list[i] = strdup(v)))
			r = fail_oom(ctx->err);
		if (r) {
			free_list(list);
			return r;
		}
	}
	char ***slot = field_ptr(cfg, k->field);
	free_list(*slot);
	*slot = list;
	*(size_t *)field_ptr(cfg, k->len_field) = (size_t)n;
	return 0;
}

static int apply_value(const load_ctx *ctx, sovmesh_config *cfg, const key_def *k,
                       const config_setting_t *s)
{
	int t = config_setting_type(s);
	switch (k->type) {
	case KT_BOOL:
		if (t != CONFIG_TYPE_BOOL)
			return fail_type(ctx, s, k->path, k->type);
		*(int *)field_ptr(cfg, k->field) = config_setting_get_bool(s) ? 1 : 0;
		return 0;
	case KT_INT: {
		if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
			return fail_type(ctx, s, k->path, k->type);
		long long v = config_setting_get_int64(s);
		int r = check_range(ctx, k, s, (double)v);
		if (r)
			return r;
		*(int64_t *)field_ptr(cfg, k->field) = v;
		return 0;
	}
	case KT_FLOAT: {
		double v;
		if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64)
			v = (double)config_setting_get_int64(s);
		else if (t == CONFIG_TYPE_FLOAT)
			v = config_setting_get_float(s);
		else
			return fail_type(ctx, s, k->path, k->type);
		if (!isfinite(v))
			return fail_at(ctx, s, k->path, "must be a finite number");
		int r = check_range(ctx, k, s, v);
		if (r)
			return r;
		*(double *)field_ptr(cfg, k->field) = v;
		return 0;
	}
	case KT_STRING: {
		if (t != CONFIG_TYPE_STRING)
			return fail_type(ctx, s, k->path, k->type);
		const char *v = config_setting_get_string(s);
		int r = check_string(ctx, k, s, v);
		return r ? r : set_string_field(cfg, k, v, ctx->err);
	}
	case KT_STRING_LIST:
		if (t != CONFIG_TYPE_ARRAY && t != CONFIG_TYPE_LIST)
			return fail_type(ctx, s, k->path, k->type);
		return apply_list(ctx, cfg, k, s);
	case KT_GROUP:
	case KT_FREE_GROUP:
		break;
	}
	return 0;
}

/* plugin_settings: only the shape here; each section's keys are checked
 * against the plugin's declared settings when it is loaded. */
static int check_plugin_sections(const load_ctx *ctx, const config_setting_t *group)
{
	int n = config_setting_length(group);
	for (int i = 0; i < n; i++) {
		const config_setting_t *c = config_setting_get_elem(group, (unsigned)i);
		const char *name = config_setting_name(c);
		char key[160];
		snprintf(key, sizeof(key), "plugin_settings.%s", name);
		if (!is_plugin_label(name))
			return fail_at(ctx, c, key,
			               "not a plugin label: expected KIND-NAME as in the plugin's "
			               "file name, e.g. dp-laplace");
		if (config_setting_type(c) != CONFIG_TYPE_GROUP)
			return fail_type(ctx, c, key, KT_GROUP);
	}
	return 0;
}

static int apply_group(const load_ctx *ctx, sovmesh_config *cfg, const config_setting_t *group,
                       const char *prefix)
{
	int n = config_setting_length(group);
	for (int i = 0; i < n; i++) {
		const config_setting_t *c = config_setting_get_elem(group, (unsigned)i);
		const char *name = config_setting_name(c);
		char path[160];
		if (*prefix)
			snprintf(path, sizeof(path), "%s.%s", prefix, name);
		else
			snprintf(path, sizeof(path), "%s", name);
		const key_def *k = find_key(path);
		if (!k) {
			char hint[120];
			suggest(prefix, name, hint, sizeof(hint));
			return fail_at(ctx, c, path, "unknown key%s", hint);
		}
		int r;
		if (k->type == KT_GROUP || k->type == KT_FREE_GROUP) {
			if (config_setting_type(c) != CONFIG_TYPE_GROUP)
				return fail_type(ctx, c, path, k->type);
			r = k->type == KT_GROUP ? apply_group(ctx, cfg, c, path)
			                        : check_plugin_sections(ctx, c);
		} else {
			r = apply_value(ctx, cfg, k, c);
		}
		if (r)
			return r;
	}
	return 0;
}

static int apply_defaults(sovmesh_config *cfg, sovmesh_error *err)
{
	for (size_t i = 0; i < N_KEYS; i++) {
		const key_def *k = &schema[i];
		switch (k->type) {
		case KT_BOOL:
			*(int *)field_ptr(cfg, k->field) = strcmp(k->def, "true") == 0;
			break;
		case KT_INT:
			*(int64_t *)field_ptr(cfg, k->field) = strtoll(k->def, NULL, 10);
			break;
		case KT_FLOAT:
			*(double *)field_ptr(cfg, k->field) = strtod(k->def, NULL);
			break;
		case KT_STRING: {
			int r = set_string_field(cfg, k, k->def, err);
			if (r)
				return r;
			break;
		}
		case KT_STRING_LIST: {
			char ***slot = field_ptr(cfg, k->field);
			free_list(*slot);
			*slot = calloc(1, sizeof(char *));
			if (!*slot)
				return fail_oom(err);
			*(size_t *)field_ptr(cfg, k->len_field) = 0;
			break;
		}
		case KT_GROUP:
		case KT_FREE_GROUP:
			break;
		}
	}
	return 0;
}

/*
 * libconfig 1.5 wraps integer literals beyond 32 bits without the L
 * suffix (4294967297 reads as 1) and says nothing, so a wild value could
 * pass a range check.  Scan the text for such literals, skipping strings,
 * comments and names, and return the line of the first one (0 if none).
 */
static unsigned find_wrapped_int(const char *text, char *lit, size_t lit_len)
{
	unsigned line = 1;
	const char *p = text;
	while (*p) {
		if (*p == '\n') {
			line++;
			p++;
		} else if (*p == '#' || (p[0] == '/' && p[1] == '/')) {
			while (*p && *p != '\n')
				p++;
		} else if (p[0] == '/' && p[1] == '*') {
			p += 2;
			while (*p && !(p[0] == '*' && p[1] == '/'))
				line += *p++ == '\n';
			if (*p)
				p += 2;
		} else if (*p == '"') {
			for (p++; *p && *p != '"'; p++) {
				if (*p == '\\' && p[1])
					p++;
				line += *p == '\n';
			}
			if (*p)
				p++;
		} else if (isalpha((unsigned char)*p) || *p == '*' || *p == '_' || *p == '.') {
			/* names (which may hold digits and '-') and float tails */
			p++;
			while (isalnum((unsigned char)*p) || *p == '-' || *p == '_' || *p == '*' ||
			       *p == '.')
				p++;
		} else if (isdigit((unsigned char)*p) ||
		           ((*p == '-' || *p == '+') && isdigit((unsigned char)p[1]))) {
			const char *start = p;
			if (*p == '-' || *p == '+')
				p++;
			bool hex = p[0] == '0' && (p[1] == 'x' || p[1] == 'X');
			if (hex)
				p += 2;
			while (hex ? isxdigit((unsigned char)*p) : isdigit((unsigned char)*p))
				p++;
			if (!hex && (*p == '.' || *p == 'e' || *p == 'E'))
				continue; /* a float; the name branch eats the rest */
			if (*p == 'L')
				continue; /* 64-bit literal: fine */
			errno = 0;
			long long v = strtoll(start, NULL, hex ? 16 : 10);
			bool wrapped = errno == ERANGE || v > INT32_MAX || v < INT32_MIN;
			if (wrapped) {
				snprintf(lit, lit_len, "%.*s", (int)(p - start), start);
				return line;
			}
		} else {
			p++;
		}
	}
	return 0;
}

/* Dotted path of a setting, for error messages. */
static void setting_path(const config_setting_t *s, char *buf, size_t len)
{
	if (!s || !config_setting_parent(s)) {
		buf[0] = '\0';
		return;
	}
	setting_path(config_setting_parent(s), buf, len);
	size_t n = strlen(buf);
	const char *name = config_setting_name(s);
	if (name)
		snprintf(buf + n, len - n, "%s%s", n ? "." : "", name);
	else
		snprintf(buf + n, len - n, "[%d]", config_setting_index(s));
}

/* The integer setting on `line` (depth-first), to name the key. */
static const config_setting_t *int_setting_on_line(const config_setting_t *s, unsigned line)
{
	int t = config_setting_type(s);
	if ((t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64) &&
	    config_setting_source_line(s) == line && !config_setting_source_file(s))
		return s;
	if (t == CONFIG_TYPE_GROUP || t == CONFIG_TYPE_ARRAY || t == CONFIG_TYPE_LIST) {
		int n = config_setting_length(s);
		for (int i = 0; i < n; i++) {
			const config_setting_t *hit =
			    int_setting_on_line(config_setting_get_elem(s, (unsigned)i), line);
			if (hit)
				return hit;
		}
	}
	return NULL;
}

static int check_wrapped_ints(const load_ctx *ctx, config_t *tree, const char *text)
{
	char lit[64];
	unsigned line = find_wrapped_int(text, lit, sizeof(lit));
	if (!line)
		return 0;
	const config_setting_t *s = int_setting_on_line(config_root_setting(tree), line);
	char key[200];
	setting_path(s, key, sizeof(key));
	if (s && key[0])
		return sovmesh_fail(ctx->err, -EINVAL,
		                    "%s:%u: %s: integer %s does not fit in 32 bits and libconfig "
		                    "would wrap it; write %sL if you mean it",
		                    ctx->name, line, key, lit, lit);
	return sovmesh_fail(ctx->err, -EINVAL,
	                    "%s:%u: integer %s does not fit in 32 bits and libconfig would wrap "
	                    "it; write %sL if you mean it",
	                    ctx->name, line, lit, lit);
}

static char *join_path(const char *dir, const char *leaf)
{
	size_t n = strlen(dir);
	while (n > 1 && dir[n - 1] == '/')
		n--;
	char *out = NULL;
	if (asprintf(&out, "%.*s/%s", (int)n, dir, leaf) < 0)
		return NULL;
	return out;
}

/* The state dir when node.state_dir is "": $SOVMESH_STATE_DIR, else
 * /var/lib/sovmesh for root, else the XDG state home. */
static int default_state_dir(const load_ctx *ctx, char **out)
{
	const char *env = getenv("SOVMESH_STATE_DIR");
	if (env && *env) {
		if (*env != '/')
			return sovmesh_fail(ctx->err, -EINVAL,
			                    "SOVMESH_STATE_DIR: must be an absolute path, got '%s'",
			                    env);
		*out = strdup(env);
		return *out ? 0 : fail_oom(ctx->err);
	}
	if (geteuid() == 0) {
		*out = strdup("/var/lib/sovmesh");
		return *out ? 0 : fail_oom(ctx->err);
	}
	/* The XDG spec says to ignore a relative XDG_STATE_HOME. */
	const char *xdg = getenv("XDG_STATE_HOME");
	if (xdg && xdg[0] == '/') {
		*out = join_path(xdg, "sovmesh");
		return *out ? 0 : fail_oom(ctx->err);
	}
	const char *home = getenv("HOME");
	struct passwd pw, *pwp = NULL;
	char pwbuf[4096];
	if ((!home || home[0] != '/') &&
	    getpwuid_r(geteuid(), &pw, pwbuf, sizeof(pwbuf), &pwp) == 0 && pwp)
		home = pwp->pw_dir;
	if (!home || home[0] != '/')
		return sovmesh_fail(ctx->err, -ENOENT,
		                    "%s: node.state_dir: no default: HOME is not set and the user "
		                    "has no home directory; set node.state_dir",
		                    ctx->name);
	*out = join_path(home, ".local/state/sovmesh");
	return *out ? 0 : fail_oom(ctx->err);
}

static int fill_computed(const load_ctx *ctx, sovmesh_config *cfg)
{
	if (!cfg->node_name[0]) {
		char host[256] = "";
		if (gethostname(host, sizeof(host) - 1) != 0 || !host[0])
			snprintf(host, sizeof(host), "sovmesh");
		host[MAX_NODE_NAME] = '\0';
		char *copy = strdup(host);
		if (!copy)
			return fail_oom(ctx->err);
		free(cfg->node_name);
		cfg->node_name = copy;
	}
	if (!cfg->state_dir[0]) {
		char *dir = NULL;
		int r = default_state_dir(ctx, &dir);
		if (r)
			return r;
		free(cfg->state_dir);
		cfg->state_dir = dir;
	}
	/* "/x/" and "/x" are the same directory; keep joins tidy. */
	size_t n = strlen(cfg->state_dir);
	while (n > 1 && cfg->state_dir[n - 1] == '/')
		cfg->state_dir[--n] = '\0';
	if (!cfg->control_socket[0]) {
		char *sock = join_path(cfg->state_dir, "control.sock");
		if (!sock)
			return fail_oom(ctx->err);
		free(cfg->control_socket);
		cfg->control_socket = sock;
		size_t max = sizeof(((struct sockaddr_un *)0)->sun_path) - 1;
		if (strlen(sock) > max)
			return sovmesh_fail(
			    ctx->err, -EINVAL,
			    "%s: control.socket: the default %s is %zu bytes long; a "
			    "Unix socket path may have at most %zu: set control.socket",
			    ctx->name, sock, strlen(sock), max);
	}
	return 0;
}

/* Parse `text` into a new config.  `dir` (may be NULL) resolves relative
 * @include paths. */
static int load_text_unchecked(const char *text, const char *name, const char *dir,
                               sovmesh_config **out, sovmesh_error *err)
{
	*out = NULL;
	sovmesh_config *cfg = calloc(1, sizeof(*cfg));
	if (!cfg)
		return fail_oom(err);
	config_init(&cfg->tree);
	cfg->source = strdup(name);
	if (!cfg->source) {
		config_free(cfg);
		return fail_oom(err);
	}
	load_ctx ctx = {.name = cfg->source, .include_dir = dir, .err = err};
	if (dir)
		config_set_include_dir(&cfg->tree, dir);
	if (!config_read_string(&cfg->tree, text)) {
		const char *file = config_error_file(&cfg->tree);
		bool rel = file && file[0] != '/' && dir;
		int r = sovmesh_fail(err, -EINVAL, "%s%s%s:%d: %s", rel ? dir : "", rel ? "/" : "",
		                     file ? file : name, config_error_line(&cfg->tree),
		                     config_error_text(&cfg->tree));
		config_free(cfg);
		return r;
	}
	/* Settings parsed from the string carry no file name; later errors
	 * (plugin_settings.c) find it on the root. */
	config_setting_set_hook(config_root_setting(&cfg->tree), cfg->source);
	int r = check_wrapped_ints(&ctx, &cfg->tree, text);
	if (!r)
		r = apply_defaults(cfg, err);
	if (!r)
		r = apply_group(&ctx, cfg, config_root_setting(&cfg->tree), "");
	if (!r)
		r = fill_computed(&ctx, cfg);
	if (!r && cfg->fl_enabled && strcmp(cfg->noise_mechanism, "none") == 0 &&
	    !cfg->allow_no_noise) {
		const config_setting_t *s = config_lookup(&cfg->tree, "federated_learning.noise_mechanism");
		r = fail_at(&ctx, s, "federated_learning.noise_mechanism",
		            "\"none\" adds no noise: deltas would leave this device without "
		            "differential privacy; set federated_learning.allow_no_noise = true to "
		            "allow it for experiments");
	}
	if (!r && cfg->fl_enabled && strcmp(cfg->noise_mechanism, "gaussian") == 0 &&
	    !(cfg->noise_delta > 0)) {
		const config_setting_t *s = config_lookup(&cfg->tree, "federated_learning.noise_delta");
		if (!s)
			s = config_lookup(&cfg->tree, "federated_learning.noise_mechanism");
		r = fail_at(&ctx, s, "federated_learning.noise_delta",
		            "the Gaussian mechanism needs a δ > 0 per sync (e.g. 1e-6)");
	}
	if (r) {
		config_free(cfg);
		return r;
	}
	*out = cfg;
	return 0;
}

/* Read a whole config file; NULL with err filled on failure. */
static char *read_file(const char *path, sovmesh_error *err)
{
	FILE *f = fopen(path, "re");
	if (!f) {
		int e = errno;
		sovmesh_fail(err, -e, "%s: cannot open: %s", path, strerror(e));
		return NULL;
	}
	struct stat st;
	if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
		sovmesh_fail(err, -EINVAL, "%s: not a regular file", path);
		fclose(f);
		return NULL;
	}
	if (st.st_size > MAX_CONFIG_BYTES) {
		sovmesh_fail(err, -EFBIG, "%s: %lld bytes is too big for a config file (max %d)",
		             path, (long long)st.st_size, MAX_CONFIG_BYTES);
		fclose(f);
		return NULL;
	}
	char *buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		fail_oom(err);
		fclose(f);
		return NULL;
	}
	size_t n = fread(buf, 1, (size_t)st.st_size, f);
	if (ferror(f)) {
		int e = errno ? errno : EIO;
		sovmesh_fail(err, -e, "%s: read error: %s", path, strerror(e));
		free(buf);
		fclose(f);
		return NULL;
	}
	fclose(f);
	buf[n] = '\0';
	if (memchr(buf, '\0', n)) {
		sovmesh_fail(err, -EINVAL, "%s: contains a NUL byte; not a config file", path);
		free(buf);
		return NULL;
	}
	return buf;
}

/* load_text_unchecked, with any error message made one safe line (it
 * may echo values from the file). */
static int load_text(const char *text, const char *name, const char *dir, sovmesh_config **out,
                     sovmesh_error *err)
{
	int r = load_text_unchecked(text, name, dir, out, err);
	if (r < 0 && err)
		log_one_line(err->message);
	return r;
}

/* Load and validate `path` (NULL: the embedded default).  Caller frees
 * *out with config_free(). */
int config_load(const char *path, sovmesh_config **out, sovmesh_error *err)
{
	if (!path)
		return load_text(config_default_text(), EMBEDDED_NAME, NULL, out, err);
	*out = NULL;
	char *text = read_file(path, err);
	if (!text)
		return err ? err->code : -EIO;
	char *dir = strdup(path);
	if (!dir) {
		free(text);
		return fail_oom(err);
	}
	char *slash = strrchr(dir, '/');
	if (slash == dir)
		dir[1] = '\0';
	else if (slash)
		*slash = '\0';
	else
		strcpy(dir, ".");
	int r = load_text(text, path, dir, out, err);
	free(dir);
	free(text);
	return r;
}

/* As config_load from a string; `name` labels errors and becomes source. */
int config_load_string(const char *text, const char *name, sovmesh_config **out, sovmesh_error *err)
{
	return load_text(text, name ? name : "<string>", NULL, out, err);
}

/* plugin_settings.<label> of the loaded tree (owned by cfg), or NULL. */
const config_setting_t *config_plugin_section(const sovmesh_config *cfg, const char *label)
{
	if (!cfg || !label)
		return NULL;
	/* Walk by name: labels contain '-', which config_lookup's path
	 * syntax need not treat as part of a name. */
	config_setting_t *ps =
	    config_setting_get_member(config_root_setting(&cfg->tree), "plugin_settings");
	if (!ps || config_setting_type(ps) != CONFIG_TYPE_GROUP)
		return NULL;
	config_setting_t *sec = config_setting_get_member(ps, label);
	if (!sec || config_setting_type(sec) != CONFIG_TYPE_GROUP)
		return NULL;
	return sec;
}

/* The embedded default config (static storage). */
const char *config_default_text(void)
{
	return config_default_text_data;
}

/* Free everything; NULL is a no-op. */
void config_free(sovmesh_config *cfg)
{
	if (!cfg)
		return;
	config_destroy(&cfg->tree);
	free(cfg->source);
	free(cfg->node_name);
	free(cfg->state_dir);
	free_list(cfg->plugin_path);
	free(cfg->control_socket);
	free(cfg->mesh_discovery);
	free(cfg->peer_listen);
	free(cfg->thermal_sysfs_root);
	free(cfg->api_listen);
	free(cfg->inference_backend);
	free(cfg->inference_default_model);
	free(cfg->cache_plugin);
	free(cfg->cache_embedding_model);
	free(cfg->template_text);
	free(cfg->template_near_miss_text);
	free(cfg->pairing_listen);
	free(cfg->aggregation_method);
	free(cfg->noise_mechanism);
	free(cfg->fl_trainer);
	free(cfg->fl_accountant);
	free(cfg->fl_base_model);
	free(cfg->fl_adapted_model);
	free(cfg);
}
