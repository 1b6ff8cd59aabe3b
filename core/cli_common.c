/* The sovmesh client's shared parts (see cli.h). */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "build_config.h"
#include "control_client.h"

int cli_fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("error: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	return 1;
}

int cli_load_config(const cli *c, sovmesh_config **cfg)
{
	sovmesh_error err = {0};
	const char *path = c->config_path;
	FILE *f = NULL;
	if (!path && (f = fopen(SOVMESH_SYSTEM_CONFIG, "r"))) {
		fclose(f);
		path = SOVMESH_SYSTEM_CONFIG;
	}
	if (config_load(path, cfg, &err) < 0)
		return cli_fail("%s", err.message);
	return 0;
}

int cli_search_path(const cli *c, plugin_search_path *sp)
{
	sovmesh_config *cfg = NULL;
	if (cli_load_config(c, &cfg))
		return 1;
	int r = plugin_search_path_build((const char *const *)cfg->plugin_path,
	                                 cfg->plugin_path_len, sp);
	config_free(cfg);
	if (r < 0)
		return cli_fail("cannot build the plugin search path: %s", strerror(-r));
	return 0;
}

int cli_call(const cli *c, const char *method, const char *path, json_t *body, long timeout_ms,
             json_t **reply)
{
	char socket_buf[4096];
	const char *socket_path = c->socket_path;
	*reply = NULL;
	if (!socket_path) {
		sovmesh_config *cfg = NULL;
		if (cli_load_config(c, &cfg))
			return 1;
		snprintf(socket_buf, sizeof(socket_buf), "%s", cfg->control_socket);
		config_free(cfg);
		socket_path = socket_buf;
	}
	char err[512] = "";
	long status = 0;
	if (control_client_request(socket_path, method, path, body, timeout_ms, reply, &status, err,
	                           sizeof(err)) < 0)
		return cli_fail("%s", err);
	if (status < 200 || status > 299) {
		json_t *msg = *reply ? json_object_get(*reply, "error") : NULL;
		cli_fail("%s", json_is_string(msg) ? json_string_value(msg) : "request failed");
		json_decref(*reply);
		*reply = NULL;
		return 1;
	}
	return 0;
}

void cli_print_json(json_t *j)
{
	char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
	if (s)
		puts(s);
	free(s);
}

const char *cli_str(json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);
	return json_is_string(v) ? json_string_value(v) : "-";
}
