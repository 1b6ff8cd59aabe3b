/*
 * Finding, opening and checking plugins.  The checks run in the order a
 * careful reader of untrusted memory must use: magic first (the only
 * field every descriptor shares), then the size, and only then the
 * fields that size covers.  docs/plugin-abi.md lists every message.
 */
#include "plugin_loader.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sovmesh/sovmesh.h>

#include "build_config.h"

/* Longest plugin name accepted: keeps "<prefix>-<name>.so" a sane file name. */
#define PLUGIN_NAME_MAX 64

/* End offset of a struct member: the least size that holds it. */
#define END_OF(type, member) (offsetof(type, member) + sizeof(((type *)0)->member))

/* A slot the host cannot do without; NULL or outside the table: refused. */
typedef struct mandatory_slot {
	const char *name;
	size_t offset;
} mandatory_slot;

#define SLOT_NAME(member) #member
#define SLOT(type, member)                                                                         \
	{                                                                                          \
		SLOT_NAME(member), offsetof(type, member)                                          \
	}

static const mandatory_slot discovery_slots[] = {SLOT(sovmesh_discovery_ops, start)};
static const mandatory_slot backend_slots[] = {
    SLOT(sovmesh_backend_ops, list_models), SLOT(sovmesh_backend_ops, generate),
    SLOT(sovmesh_backend_ops, embed),       SLOT(sovmesh_backend_ops, apply_adapter),
    SLOT(sovmesh_backend_ops, cancel),
};
static const mandatory_slot cache_slots[] = {SLOT(sovmesh_cache_ops, lookup),
                                             SLOT(sovmesh_cache_ops, store)};
static const mandatory_slot aggregator_slots[] = {SLOT(sovmesh_aggregator_ops, aggregate)};
static const mandatory_slot noise_slots[] = {SLOT(sovmesh_noise_ops, cost),
                                             SLOT(sovmesh_noise_ops, perturb)};
static const mandatory_slot trainer_slots[] = {SLOT(sovmesh_trainer_ops, train)};

typedef struct kind_info {
	uint32_t kind;
	const char *prefix;
	const char *label;
	size_t ops_size;
	/* Least ops->size accepted: the end of the last mandatory slot.  Every
	 * mandatory slot existed in ABI 1.0, so no valid table is shorter. */
	size_t ops_min;
	const mandatory_slot *slots;
	size_t n_slots;
} kind_info;

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

static const kind_info kinds[] = {
    {SOVMESH_KIND_DISCOVERY, "discovery", "discovery", sizeof(sovmesh_discovery_ops),
     END_OF(sovmesh_discovery_ops, start), discovery_slots, N_OF(discovery_slots)},
    {SOVMESH_KIND_BACKEND, "backend", "inference backend", sizeof(sovmesh_backend_ops),
     END_OF(sovmesh_backend_ops, cancel), backend_slots, N_OF(backend_slots)},
    {SOVMESH_KIND_CACHE, "cache", "answer cache", sizeof(sovmesh_cache_ops),
     END_OF(sovmesh_cache_ops, store), cache_slots, N_OF(cache_slots)},
    {SOVMESH_KIND_AGGREGATOR, "agg", "aggregator", sizeof(sovmesh_aggregator_ops),
     END_OF(sovmesh_aggregator_ops, aggregate), aggregator_slots, N_OF(aggregator_slots)},
    {SOVMESH_KIND_NOISE, "dp", "noise mechanism", sizeof(sovmesh_noise_ops),
     END_OF(sovmesh_noise_ops, perturb), noise_slots, N_OF(noise_slots)},
    {SOVMESH_KIND_TRAINER, "trainer", "trainer", sizeof(sovmesh_trainer_ops),
     END_OF(sovmesh_trainer_ops, train), trainer_slots, N_OF(trainer_slots)},
};

static const kind_info *kind_find(uint32_t kind)
{
	for (size_t i = 0; i < N_OF(kinds); i++)
		if (kinds[i].kind == kind)
			return &kinds[i];
	return NULL;
}

const char *plugin_kind_prefix(uint32_t kind)
{
	const kind_info *k = kind_find(kind);
	return k ? k->prefix : NULL;
}

const char *plugin_kind_label(uint32_t kind)
{
	const kind_info *k = kind_find(kind);
	return k ? k->label : "unknown kind";
}

size_t plugin_kind_ops_size(uint32_t kind)
{
	const kind_info *k = kind_find(kind);
	return k ? k->ops_size : 0;
}

/* ---- search path ---- */

static int sp_add(plugin_search_path *sp, const char *dir, size_t len)
{
	if (len == 0)
		return 0;
	for (size_t i = 0; i < sp->count; i++)
		if (strlen(sp->dirs[i]) == len && memcmp(sp->dirs[i], dir, len) == 0)
			return 0; /* searching a directory twice finds nothing new */
	char **dirs = realloc(sp->dirs, (sp->count + 1) * sizeof(*dirs));
	if (!dirs)
		return -ENOMEM;
	sp->dirs = dirs;
	dirs[sp->count] = strndup(dir, len);
	if (!dirs[sp->count])
		return -ENOMEM;
	sp->count++;
	return 0;
}

/* True when /proc/self/exe lies under the build root: then the build
 * tree's plugins are the ones that match this binary. */
static bool running_from_build_tree(void)
{
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0)
		return false;
	exe[n] = '\0';
	size_t rlen = strlen(SOVMESH_BUILD_ROOT);
	return (size_t)n > rlen + 1 && strncmp(exe, SOVMESH_BUILD_ROOT, rlen) == 0 &&
	       exe[rlen] == '/';
}

int plugin_search_path_build(const char *const *config_dirs, size_t n_config,
                             plugin_search_path *out)
{
	plugin_search_path sp = {0, NULL};
	int r = 0;

	for (size_t i = 0; config_dirs && i < n_config && r == 0; i++)
		if (config_dirs[i])
			r = sp_add(&sp, config_dirs[i], strlen(config_dirs[i]));

	const char *env = getenv("SOVMESH_PLUGIN_PATH");
	while (env && *env && r == 0) {
		const char *colon = strchr(env, ':');
		size_t len = colon ? (size_t)(colon - env) : strlen(env);
		r = sp_add(&sp, env, len);
		env = colon ? colon + 1 : NULL;
	}

	if (r == 0 && running_from_build_tree())
		r = sp_add(&sp, SOVMESH_BUILD_PLUGIN_DIR, strlen(SOVMESH_BUILD_PLUGIN_DIR));
	if (r == 0)
		r = sp_add(&sp, SOVMESH_PLUGIN_INSTALL_DIR, strlen(SOVMESH_PLUGIN_INSTALL_DIR));

	if (r < 0) {
		plugin_search_path_free(&sp);
		return r;
	}
	*out = sp;
	return 0;
}

void plugin_search_path_free(plugin_search_path *sp)
{
	if (!sp)
		return;
	for (size_t i = 0; i < sp->count; i++)
		free(sp->dirs[i]);
	free(sp->dirs);
	sp->dirs = NULL;
	sp->count = 0;
}

/* ---- loading ---- */

/* NULL if `name` is a valid plugin name, else why not. */
static const char *name_problem(const char *name)
{
	if (!name || !*name)
		return "is empty";
	if (strlen(name) > PLUGIN_NAME_MAX)
		return "is longer than 64 characters";
	if (!((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= '0' && name[0] <= '9')))
		return "must start with a lowercase letter or digit";
	for (const char *c = name; *c; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_'))
			return "may contain only a-z, 0-9 and _";
	return NULL;
}

/* "an aggregator" / "a noise mechanism" for messages. */
static const char *article(const char *label)
{
	return strchr("aeiou", label[0]) ? "an" : "a";
}

void plugin_release(loaded_plugin *p, int unload)
{
	if (!p)
		return;
	if (unload && p->dl)
		dlclose(p->dl);
	free(p->path);
	free(p->label);
	free(p->ops);
	free(p);
}

/* All checks on the descriptor; 0 or -ELIBBAD with err filled. */
static int check_descriptor(const char *path, const sovmesh_plugin_descriptor *d,
                            const kind_info *want, const char *name, sovmesh_error *err)
{
	if (!d)
		return sovmesh_fail(err, -ELIBBAD, "plugin %s: %s() returned NULL", path,
		                    SOVMESH_PLUGIN_ENTRY_SYMBOL);
	/* Only magic may be read before it is known to be a sovmesh descriptor,
	 * and only magic and size before the size is known to cover the rest. */
	if (d->magic != SOVMESH_PLUGIN_MAGIC)
		return sovmesh_fail(err, -ELIBBAD,
		                    "plugin %s: bad magic 0x%016llx in the descriptor (not a "
		                    "sovmesh plugin, or a corrupt one)",
		                    path, (unsigned long long)d->magic);
	if (d->size < END_OF(sovmesh_plugin_descriptor, ops))
		return sovmesh_fail(err, -ELIBBAD,
		                    "plugin %s: descriptor too small (%u bytes, this host needs "
		                    "at least %zu)",
		                    path, (unsigned)d->size,
		                    END_OF(sovmesh_plugin_descriptor, ops));
	if (d->abi_major != SOVMESH_ABI_MAJOR)
		return sovmesh_fail(err, -ELIBBAD,
		                    "plugin %s: ABI major %u is not supported (this host speaks "
		                    "ABI %d.%d); rebuild the plugin against this SDK",
		                    path, (unsigned)d->abi_major, SOVMESH_ABI_MAJOR,
		                    SOVMESH_ABI_MINOR);
	if (d->abi_minor > SOVMESH_ABI_MINOR)
		return sovmesh_fail(err, -ELIBBAD,
		                    "plugin %s: ABI %u.%u is newer than this host's ABI %d.%d; "
		                    "upgrade sovmesh or use an older build of the plugin",
		                    path, (unsigned)d->abi_major, (unsigned)d->abi_minor,
		                    SOVMESH_ABI_MAJOR, SOVMESH_ABI_MINOR);
	const kind_info *k = kind_find(d->kind);
	if (!k)
		return sovmesh_fail(err, -ELIBBAD, "plugin %s: unknown plugin kind %u", path,
		                    (unsigned)d->kind);
	if (k != want)
		return sovmesh_fail(
		    err, -ELIBBAD,
		    "plugin %s: wrong kind: it is %s %s plugin, expected %s %s plugin", path,
		    article(k->label), k->label, article(want->label), want->label);
	if (!d->name)
		return sovmesh_fail(err, -ELIBBAD, "plugin %s: descriptor has no name", path);
	const char *why = name_problem(d->name);
	if (why)
		return sovmesh_fail(err, -ELIBBAD, "plugin %s: descriptor name '%.64s' %s", path,
		                    d->name, why);
	if (name && strcmp(d->name, name) != 0)
		return sovmesh_fail(err, -ELIBBAD,
		                    "plugin %s: name mismatch: the descriptor says '%s', the "
		                    "config asked for '%s'",
		                    path, d->name, name);
	if (!d->version)
		return sovmesh_fail(err, -ELIBBAD, "plugin %s: descriptor has no version", path);
	if (!d->create)
		return sovmesh_fail(err, -ELIBBAD, "plugin %s: descriptor has no create function",
		                    path);
	if (!d->ops)
		return sovmesh_fail(err, -ELIBBAD, "plugin %s: descriptor has no ops table", path);
	uint32_t ops_size = *(const uint32_t *)d->ops;
	if (ops_size < sizeof(uint32_t) || ops_size < k->ops_min)
		return sovmesh_fail(err, -ELIBBAD,
		                    "plugin %s: ops table too small (%u bytes; %s %s table "
		                    "needs at least %zu)",
		                    path, (unsigned)ops_size, article(k->label), k->label,
		                    k->ops_min);
	return 0;
}

/* Copy the plugin's ops into a zeroed host-sized table; check the slots
 * the host calls without looking. */
static int copy_ops(const char *path, const void *ops, const kind_info *k, void **out,
                    sovmesh_error *err)
{
	uint32_t plugin_size = *(const uint32_t *)ops;
	size_t n = plugin_size < k->ops_size ? plugin_size : k->ops_size;
	unsigned char *copy = calloc(1, k->ops_size);
	if (!copy)
		return sovmesh_fail(err, -ENOMEM, "plugin %s: out of memory", path);
	memcpy(copy, ops, n);
	/* The copy's size says how much of it came from the plugin, so
	 * SOVMESH_HAS_SLOT on it stays truthful. */
	uint32_t copied = (uint32_t)n;
	memcpy(copy, &copied, sizeof(copied));
	for (size_t i = 0; i < k->n_slots; i++) {
		void *slot;
		memcpy(&slot, copy + k->slots[i].offset, sizeof(slot));
		if (!slot) {
			free(copy);
			return sovmesh_fail(err, -ELIBBAD,
			                    "plugin %s: mandatory ops slot '%s' is NULL", path,
			                    k->slots[i].name);
		}
	}
	*out = copy;
	return 0;
}

int plugin_load_file(const char *path, uint32_t kind, const char *name, loaded_plugin **out,
                     sovmesh_error *err)
{
	*out = NULL;
	const kind_info *k = kind_find(kind);
	if (!path || !k)
		return sovmesh_fail(err, -EINVAL, "plugin %s: unknown plugin kind %u requested",
		                    path ? path : "(null)", (unsigned)kind);
	if (name) {
		const char *why = name_problem(name);
		if (why)
			return sovmesh_fail(err, -EINVAL, "plugin name '%.64s' %s", name, why);
	}

	struct stat st;
	if (stat(path, &st) < 0)
		return sovmesh_fail(err, errno == ENOENT ? -ENOENT : -ELIBBAD, "plugin %s: %s",
		                    path, strerror(errno));
	if (!S_ISREG(st.st_mode))
		return sovmesh_fail(err, -ELIBBAD, "plugin %s: not a regular file", path);

	/* A path without '/' would make dlopen search LD_LIBRARY_PATH. */
	char rel[PATH_MAX];
	const char *open_path = path;
	if (!strchr(path, '/')) {
		if (snprintf(rel, sizeof(rel), "./%s", path) >= (int)sizeof(rel))
			return sovmesh_fail(err, -ENAMETOOLONG, "plugin %s: path too long", path);
		open_path = rel;
	}

	loaded_plugin *p = calloc(1, sizeof(*p));
	if (!p)
		return sovmesh_fail(err, -ENOMEM, "plugin %s: out of memory", path);
	int r;

	dlerror();
	p->dl = dlopen(open_path, RTLD_NOW | RTLD_LOCAL);
	if (!p->dl) {
		const char *e = dlerror();
		if (!e)
			e = "unknown error";
		/* dlerror() usually repeats the path; say it once. */
		size_t plen = strlen(open_path);
		if (strncmp(e, open_path, plen) == 0 && strncmp(e + plen, ": ", 2) == 0)
			e += plen + 2;
		r = sovmesh_fail(err, -ELIBBAD, "plugin %s: dlopen failed: %s", path, e);
		goto fail;
	}

	dlerror();
	void *sym = dlsym(p->dl, SOVMESH_PLUGIN_ENTRY_SYMBOL);
	if (!sym) {
		r = sovmesh_fail(err, -ELIBBAD,
		                 "plugin %s: missing symbol %s (not a sovmesh plugin?)", path,
		                 SOVMESH_PLUGIN_ENTRY_SYMBOL);
		goto fail;
	}
	sovmesh_plugin_entry_fn entry;
	/* POSIX guarantees object/function pointer conversion for dlsym. */
	memcpy(&entry, &sym, sizeof(entry));
	const sovmesh_plugin_descriptor *d = entry();

	r = check_descriptor(path, d, k, name, err);
	if (r < 0)
		goto fail;
	r = copy_ops(path, d->ops, k, &p->ops, err);
	if (r < 0)
		goto fail;

	p->desc = d;
	p->kind = d->kind;
	p->path = strdup(path);
	if (p->path && asprintf(&p->label, "%s-%s", k->prefix, d->name) < 0)
		p->label = NULL;
	if (!p->path || !p->label) {
		r = sovmesh_fail(err, -ENOMEM, "plugin %s: out of memory", path);
		goto fail;
	}
	*out = p;
	return 0;

fail:
	/* Nothing of the refused plugin ran except its entry function, so
	 * unloading it cannot leave loop handles behind. */
	plugin_release(p, 1);
	return r;
}

/* Append `s` to buf at *len, truncating with "..." when full. */
static void append(char *buf, size_t cap, size_t *len, const char *s)
{
	if (*len >= cap - 1)
		return;
	int n = snprintf(buf + *len, cap - *len, "%s", s);
	if (n < 0)
		return;
	if ((size_t)n >= cap - *len) {
		*len = cap - 1;
		if (cap > 4)
			memcpy(buf + cap - 4, "...", 4);
		return;
	}
	*len += (size_t)n;
}

int plugin_load_by_name(const plugin_search_path *sp, uint32_t kind, const char *name,
                        loaded_plugin **out, sovmesh_error *err)
{
	*out = NULL;
	const kind_info *k = kind_find(kind);
	if (!k)
		return sovmesh_fail(err, -EINVAL, "unknown plugin kind %u requested",
		                    (unsigned)kind);
	const char *why = name_problem(name);
	if (why)
		return sovmesh_fail(err, -EINVAL, "%s plugin name '%.64s' %s", k->label,
		                    name ? name : "", why);

	char file[PLUGIN_NAME_MAX + 32];
	snprintf(file, sizeof(file), "%s-%s.so", k->prefix, name);

	for (size_t i = 0; sp && i < sp->count; i++) {
		char *path;
		if (asprintf(&path, "%s/%s", sp->dirs[i], file) < 0)
			return sovmesh_fail(err, -ENOMEM, "plugin %s: out of memory", file);
		struct stat st;
		if (stat(path, &st) == 0) {
			/* First match wins, also when it is refused: a broken plugin
			 * early on the path must be seen, not silently shadowed. */
			int r = plugin_load_file(path, kind, name, out, err);
			free(path);
			return r;
		}
		free(path);
	}

	char msg[sizeof(err->message)];
	size_t len = 0;
	msg[0] = '\0';
	append(msg, sizeof(msg), &len, "plugin ");
	append(msg, sizeof(msg), &len, file);
	append(msg, sizeof(msg), &len, " not found; searched: ");
	if (!sp || sp->count == 0)
		append(msg, sizeof(msg), &len, "(no directories)");
	for (size_t i = 0; sp && i < sp->count; i++) {
		if (i)
			append(msg, sizeof(msg), &len, ", ");
		append(msg, sizeof(msg), &len, sp->dirs[i]);
	}
	return sovmesh_fail(err, -ENOENT, "%s", msg);
}
