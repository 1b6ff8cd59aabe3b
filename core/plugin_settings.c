/*
 * A plugin's declared settings: the declarations are checked first (a bad
 * one is the plugin's fault and says so), then values from a config
 * section or from "--param KEY=VALUE" are checked against them.
 */
#include "plugin_settings.h"

#include "log.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool is_setting_name(const char *s)
{
	if (!s || !(*s >= 'a' && *s <= 'z'))
		return false;
	for (const char *p = s; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
			return false;
	return strlen(s) <= 64;
}

static bool bounded(const sovmesh_setting_def *d)
{
	return !(d->min == 0 && d->max == 0);
}

static bool in_range(const sovmesh_setting_def *d, double v)
{
	return !bounded(d) || (v >= d->min && v <= d->max);
}

static const char *type_word(sovmesh_setting_type t)
{
	switch (t) {
	case SOVMESH_SETTING_BOOL:
		return "true or false";
	case SOVMESH_SETTING_INT:
		return "an integer";
	case SOVMESH_SETTING_DOUBLE:
		return "a number";
	case SOVMESH_SETTING_STRING:
		return "a string";
	}
	return "?";
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

/* "must be a number in [0, 0.5]" or, unbounded, "must be a number". */
static void range_text(const sovmesh_setting_def *d, char *buf, size_t len)
{
	char lo[40], hi[40];
	/* A cut message is still a message: the return value is checked
	 * only to say that truncation is accepted here. */
	if (bounded(d)) {
		if (snprintf(buf, len, "must be %s in [%s, %s]", type_word(d->type),
		             fmt_num(lo, sizeof(lo), d->min), fmt_num(hi, sizeof(hi), d->max)) < 0)
			buf[0] = '\0';
	}
	else if (d->type == SOVMESH_SETTING_DOUBLE)
		snprintf(buf, len, "must be a finite number");
	else
		snprintf(buf, len, "must be an integer that fits in 64 bits");
}

/* Text -> value, as the offline tools' --param and the defaults are
 * written.  0, or -EINVAL (not of the type) or -ERANGE (out of range). */
static int parse_text(const sovmesh_setting_def *d, const char *text, plugin_setting_value *v)
{
	switch (d->type) {
	case SOVMESH_SETTING_BOOL:
		if (strcmp(text, "true") == 0)
			v->b = 1;
		else if (strcmp(text, "false") == 0)
			v->b = 0;
		else
			return -EINVAL;
		return 0;
	case SOVMESH_SETTING_INT: {
		char *end;
		errno = 0;
		long long i = strtoll(text, &end, 10);
		if (!*text || *end || end == text)
			return -EINVAL;
		if (errno == ERANGE || !in_range(d, (double)i))
			return -ERANGE;
		v->i = i;
		return 0;
	}
	case SOVMESH_SETTING_DOUBLE: {
		char *end;
		double x = strtod(text, &end);
		if (!*text || *end || end == text)
			return -EINVAL;
		if (!isfinite(x) || !in_range(d, x))
			return -ERANGE;
		v->d = x;
		return 0;
	}
	case SOVMESH_SETTING_STRING: {
		char *s = strdup(text);
		if (!s)
			return -ENOMEM;
		free(v->s);
		v->s = s;
		return 0;
	}
	}
	return -EINVAL;
}

static int oom(sovmesh_error *err)
{
	return sovmesh_fail(err, -ENOMEM, "out of memory checking plugin settings");
}

/* Check the declarations and fill every value with its default. */
static int from_defs(const char *label, const sovmesh_setting_def *defs, plugin_settings **out,
                     sovmesh_error *err)
{
	*out = NULL;
	size_t n = 0;
	while (defs && defs[n].name)
		n++;
	plugin_settings *ps = calloc(1, sizeof(*ps));
	if (!ps)
		return oom(err);
	ps->values = calloc(n ? n : 1, sizeof(*ps->values));
	if (!ps->values) {
		free(ps);
		return oom(err);
	}
	ps->count = n;
	int r = 0;
	for (size_t i = 0; i < n && !r; i++) {
		const sovmesh_setting_def *d = &defs[i];
		ps->values[i].def = d;
		if (!is_setting_name(d->name)) {
			r = sovmesh_fail(err, -EINVAL,
			                 "plugin %s declares a setting named '%s', which is not "
			                 "[a-z][a-z0-9_]*",
			                 label, d->name);
			break;
		}
		for (size_t j = 0; j < i; j++)
			if (strcmp(defs[j].name, d->name) == 0) {
				r = sovmesh_fail(err, -EINVAL,
				                 "plugin %s declares setting '%s' twice", label,
				                 d->name);
				break;
			}
		if (r)
			break;
		if (d->type < SOVMESH_SETTING_BOOL || d->type > SOVMESH_SETTING_STRING) {
			r = sovmesh_fail(err, -EINVAL,
			                 "plugin %s declares setting '%s' with unknown type %d",
			                 label, d->name, (int)d->type);
			break;
		}
		bool numeric = d->type == SOVMESH_SETTING_INT || d->type == SOVMESH_SETTING_DOUBLE;
		if (numeric && (!isfinite(d->min) || !isfinite(d->max) || d->min > d->max)) {
			r = sovmesh_fail(
			    err, -EINVAL,
			    "plugin %s declares setting '%s' with bounds [%g, %g] that "
			    "are not a range",
			    label, d->name, d->min, d->max);
			break;
		}
		if (!d->default_value) {
			r = sovmesh_fail(err, -EINVAL,
			                 "plugin %s declares setting '%s' without a default", label,
			                 d->name);
			break;
		}
		int pr = parse_text(d, d->default_value, &ps->values[i]);
		if (pr == -ENOMEM) {
			r = oom(err);
		} else if (pr == -EINVAL) {
			r = sovmesh_fail(
			    err, -EINVAL,
			    "plugin %s declares setting '%s' with default '%s' that is "
			    "not %s",
			    label, d->name, d->default_value, type_word(d->type));
		} else if (pr == -ERANGE) {
			char rt[96];
			range_text(d, rt, sizeof(rt));
			r = sovmesh_fail(
			    err, -EINVAL,
			    "plugin %s declares setting '%s' with default '%s' outside "
			    "its own range: it %s",
			    label, d->name, d->default_value, rt);
		}
	}
	if (r) {
		plugin_settings_free(ps);
		return r;
	}
	*out = ps;
	return 0;
}

static plugin_setting_value *find_value(plugin_settings *ps, const char *name)
{
	for (size_t i = 0; i < ps->count; i++)
		if (strcmp(ps->values[i].def->name, name) == 0)
			return &ps->values[i];
	return NULL;
}

/* "agg-trimmed accepts: beta, gamma" (or "accepts no settings"). */
static void accepts_text(const char *label, const plugin_settings *ps, char *buf, size_t len)
{
	if (ps->count == 0) {
		snprintf(buf, len, "%s accepts no settings", label);
		return;
	}
	size_t n = (size_t)snprintf(buf, len, "%s accepts: ", label);
	for (size_t i = 0; i < ps->count && n < len; i++)
		n += (size_t)snprintf(buf + n, len - n, "%s%s", i ? ", " : "",
		                      ps->values[i].def->name);
}

/* The file a setting came from: its own (an @include'd file), else the
 * name config.c hung on the root, else a placeholder. */
static const char *source_file(const config_setting_t *s, char *buf, size_t len)
{
	const char *f = config_setting_source_file(s);
	/* libconfig keeps @include names as written, relative to its
	 * include dir. */
	const char *dir = s->config ? config_get_include_dir(s->config) : NULL;
	if (f && f[0] != '/' && dir) {
		snprintf(buf, len, "%s/%s", dir, f);
		return buf;
	}
	if (f)
		return f;
	const config_setting_t *root = s;
	while (config_setting_parent(root))
		root = config_setting_parent(root);
	const char *name = config_setting_get_hook(root);
	return name ? name : "<config>";
}

static int apply_setting(const char *label, plugin_settings *ps, const config_setting_t *s,
                         sovmesh_error *err)
{
	const char *name = config_setting_name(s);
	char fbuf[512];
	const char *file = source_file(s, fbuf, sizeof(fbuf));
	unsigned line = config_setting_source_line(s);
	plugin_setting_value *v = find_value(ps, name);
	if (!v) {
		char acc[300];
		accepts_text(label, ps, acc, sizeof(acc));
		return sovmesh_fail(err, -EINVAL,
		                    "%s:%u: plugin_settings.%s.%s: unknown setting; %s", file, line,
		                    label, name, acc);
	}
	const sovmesh_setting_def *d = v->def;
	int t = config_setting_type(s);
	bool is_int = t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64;
	bool type_ok = (d->type == SOVMESH_SETTING_BOOL && t == CONFIG_TYPE_BOOL) ||
	               (d->type == SOVMESH_SETTING_INT && is_int) ||
	               (d->type == SOVMESH_SETTING_DOUBLE && (is_int || t == CONFIG_TYPE_FLOAT)) ||
	               (d->type == SOVMESH_SETTING_STRING && t == CONFIG_TYPE_STRING);
	if (!type_ok) {
		static const char *const got[] = {
		    [CONFIG_TYPE_GROUP] = "a group",    [CONFIG_TYPE_INT] = "an integer",
		    [CONFIG_TYPE_INT64] = "an integer", [CONFIG_TYPE_FLOAT] = "a fractional number",
		    [CONFIG_TYPE_STRING] = "a string",  [CONFIG_TYPE_BOOL] = "a boolean",
		    [CONFIG_TYPE_ARRAY] = "an array",   [CONFIG_TYPE_LIST] = "a list",
		};
		const char *g = t >= 0 && t < (int)(sizeof(got) / sizeof(got[0])) && got[t]
		                    ? got[t]
		                    : "an unknown value";
		return sovmesh_fail(err, -EINVAL,
		                    "%s:%u: plugin_settings.%s.%s: expected %s, got %s", file, line,
		                    label, name, type_word(d->type), g);
	}
	double x = 0;
	switch (d->type) {
	case SOVMESH_SETTING_BOOL:
		v->b = config_setting_get_bool(s) ? 1 : 0;
		break;
	case SOVMESH_SETTING_INT:
		v->i = config_setting_get_int64(s);
		x = (double)v->i;
		break;
	case SOVMESH_SETTING_DOUBLE:
		x = is_int ? (double)config_setting_get_int64(s) : config_setting_get_float(s);
		v->d = x;
		break;
	case SOVMESH_SETTING_STRING: {
		char *copy = strdup(config_setting_get_string(s));
		if (!copy)
			return oom(err);
		free(v->s);
		v->s = copy;
		break;
	}
	}
	if ((d->type == SOVMESH_SETTING_INT || d->type == SOVMESH_SETTING_DOUBLE) &&
	    (!isfinite(x) || !in_range(d, x))) {
		char rt[96], got[40];
		range_text(d, rt, sizeof(rt));
		return sovmesh_fail(err, -EINVAL, "%s:%u: plugin_settings.%s.%s: %s, got %s", file,
		                    line, label, name, rt, fmt_num(got, sizeof(got), x));
	}
	v->given = 1;
	return 0;
}

/* Check `defs`, fill defaults, apply `section` (may be NULL).  Caller
 * frees *out with plugin_settings_free(). */
static int plugin_settings_from_config_unchecked(const char *label, const sovmesh_setting_def *defs,
                                                 const config_setting_t *section,
                                                 plugin_settings **out, sovmesh_error *err)
{
	*out = NULL;
	plugin_settings *ps;
	int r = from_defs(label, defs, &ps, err);
	if (r)
		return r;
	if (section) {
		if (config_setting_type(section) != CONFIG_TYPE_GROUP) {
			char fbuf[512];
			r = sovmesh_fail(err, -EINVAL,
			                 "%s:%u: plugin_settings.%s: expected a group { ... }",
			                 source_file(section, fbuf, sizeof(fbuf)),
			                 config_setting_source_line(section), label);
		}
		int n = r ? 0 : config_setting_length(section);
		for (int i = 0; i < n && !r; i++)
			r = apply_setting(label, ps, config_setting_get_elem(section, (unsigned)i),
			                  err);
	}
	if (r) {
		plugin_settings_free(ps);
		return r;
	}
	*out = ps;
	return 0;
}

static int apply_param(const char *label, plugin_settings *ps, const char *param,
                       const char *const *params, size_t index, sovmesh_error *err)
{
	const char *eq = strchr(param, '=');
	if (!eq || eq == param)
		return sovmesh_fail(err, -EINVAL, "--param %s: expected KEY=VALUE", param);
	size_t klen = (size_t)(eq - param);
	char name[80];
	if (klen >= sizeof(name))
		return sovmesh_fail(err, -EINVAL, "--param %s: the key is too long", param);
	memcpy(name, param, klen);
	name[klen] = '\0';
	plugin_setting_value *v = find_value(ps, name);
	if (!v) {
		char acc[300];
		accepts_text(label, ps, acc, sizeof(acc));
		return sovmesh_fail(err, -EINVAL, "--param %s: unknown setting; %s", param, acc);
	}
	if (v->given) {
		const char *first = "";
		for (size_t j = 0; j < index; j++)
			if (strncmp(params[j], param, klen + 1) == 0)
				first = params[j];
		return sovmesh_fail(err, -EINVAL, "--param %s: %s was already given (--param %s)",
		                    param, name, first);
	}
	int r = parse_text(v->def, eq + 1, v);
	if (r == -ENOMEM)
		return oom(err);
	if (r == -EINVAL)
		return sovmesh_fail(err, -EINVAL, "--param %s: expected %s", param,
		                    type_word(v->def->type));
	if (r == -ERANGE) {
		char rt[96];
		range_text(v->def, rt, sizeof(rt));
		return sovmesh_fail(err, -EINVAL, "--param %s: %s", param, rt);
	}
	v->given = 1;
	return 0;
}

/* As plugin_settings_from_config from "KEY=VALUE" strings. */
static int plugin_settings_from_params_unchecked(const char *label, const sovmesh_setting_def *defs,
                                                 const char *const *params, size_t n,
                                                 plugin_settings **out, sovmesh_error *err)
{
	*out = NULL;
	plugin_settings *ps;
	int r = from_defs(label, defs, &ps, err);
	if (r)
		return r;
	for (size_t i = 0; i < n && !r; i++)
		r = apply_param(label, ps, params[i], params, i, err);
	if (r) {
		plugin_settings_free(ps);
		return r;
	}
	*out = ps;
	return 0;
}

/* The value of `name` (owned by s), or NULL if undeclared. */
const plugin_setting_value *plugin_settings_get(const plugin_settings *s, const char *name)
{
	if (!s || !name)
		return NULL;
	for (size_t i = 0; i < s->count; i++)
		if (strcmp(s->values[i].def->name, name) == 0)
			return &s->values[i];
	return NULL;
}

/* Free the values and the strings they own; NULL is a no-op. */
void plugin_settings_free(plugin_settings *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->count; i++)
		free(s->values[i].s);
	free(s->values);
	free(s);
}

/* The public entry points: as the _unchecked versions, with the error
 * made one safe line (it echoes values from the config or command line). */
int plugin_settings_from_config(const char *label, const sovmesh_setting_def *defs,
                                const config_setting_t *section, plugin_settings **out,
                                sovmesh_error *err)
{
	int r = plugin_settings_from_config_unchecked(label, defs, section, out, err);
	if (r < 0 && err)
		log_one_line(err->message);
	return r;
}

int plugin_settings_from_params(const char *label, const sovmesh_setting_def *defs,
                                const char *const *params, size_t n, plugin_settings **out,
                                sovmesh_error *err)
{
	int r = plugin_settings_from_params_unchecked(label, defs, params, n, out, err);
	if (r < 0 && err)
		log_one_line(err->message);
	return r;
}
