/*
 * Validated values of a plugin's declared settings (sovmesh_setting_def),
 * from a config section plugin_settings.<label> or from KEY=VALUE params
 * of the offline tools.
 */
#ifndef SOVMESH_CORE_PLUGIN_SETTINGS_H
#define SOVMESH_CORE_PLUGIN_SETTINGS_H

#include <libconfig.h>
#include <sovmesh/plugin.h>

typedef struct plugin_setting_value {
	const sovmesh_setting_def *def; /* in the plugin's memory */
	int given;                      /* 1 if set by config/params */
	int b;
	int64_t i;
	double d;
	char *s;                        /* owned */
} plugin_setting_value;

typedef struct plugin_settings {
	size_t count;
	plugin_setting_value *values;
} plugin_settings;

/*
 * Check `defs` (a descriptor's list) and fill defaults, then apply
 * `section` (a libconfig group, may be NULL).  Errors name file, line and
 * key: "FILE:LINE: plugin_settings.agg-trimmed.beta: must be a number in
 * [0, 0.5]".  An invalid default in `defs` is the plugin's fault and says
 * so.  Caller frees *out with plugin_settings_free().
 */
int plugin_settings_from_config(const char *label, const sovmesh_setting_def *defs,
                                const config_setting_t *section, plugin_settings **out,
                                sovmesh_error *err);

/* As above from "KEY=VALUE" strings ("--param beta=0.1"). */
int plugin_settings_from_params(const char *label, const sovmesh_setting_def *defs,
                                const char *const *params, size_t n,
                                plugin_settings **out, sovmesh_error *err);

/* Lookup by name; NULL if undeclared. */
const plugin_setting_value *plugin_settings_get(const plugin_settings *s, const char *name);

void plugin_settings_free(plugin_settings *s);

#endif
