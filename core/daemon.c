/* sovmeshd's life cycle (see daemon.h). */
#include "daemon.h"

#include <errno.h>
#include <signal.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "build_config.h"
#include "config.h"
#include "control_api.h"
#include "control_pairing.h"
#include "control_trust.h"
#include "discovery_host.h"
#include "host.h"
#include "http_server.h"
#include "identity.h"
#include "fl_service.h"
#include "inference_service.h"
#include "log.h"
#include "peer_client.h"
#include "peer_health.h"
#include "peer_table.h"
#include "peer_transport.h"
#include "thermal.h"
#include "trust_store.h"
#include "plugin_loader.h"
#include "plugin_settings.h"

/* Plugins this build of the daemon uses.  The mesh plugins (discovery,
 * backend, cache) join this list as their subsystems land; until then
 * their config keys are validated but nothing loads them. */
#define DAEMON_MAX_PLUGINS 16

typedef struct plugin_choice {
	uint32_t kind;
	char name[80];
	const char *config_key; /* for messages */
} plugin_choice;

typedef struct daemon_state {
	const daemon_options *opts;
	const char *config_path; /* NULL = embedded default */
	sovmesh_config *cfg;
	uv_loop_t loop;
	host_runtime *rt;
	plugin_instance *plugins[DAEMON_MAX_PLUGINS];
	size_t n_plugins;
	http_server *control_server;
	control_api *control;
	identity *id;
	trust_store *trust;
	peer_transport *peer_port;
	peer_client *peers;
	control_trust *control_trust;
	control_pairing *control_pairing;
	peer_health *health;
	peer_table *ptable;
	discovery_host *disc;
	inference_service *inf;
	fl_service *fl;
	uv_signal_t sig_int, sig_term, sig_hup;
	uint64_t started_ms;
	int stopping;
	int signals_ready; /* sig_* initialised and not yet closed */
} daemon_state;

const char *daemon_config_path(const daemon_options *opts)
{
	if (opts->config_path)
		return opts->config_path;
	if (access(SOVMESH_SYSTEM_CONFIG, F_OK) == 0)
		return SOVMESH_SYSTEM_CONFIG;
	return NULL;
}

static void plan_add(plugin_choice *out, size_t *n, uint32_t kind, const char *name,
                     const char *key)
{
	if (*n >= DAEMON_MAX_PLUGINS)
		return;
	out[*n].kind = kind;
	snprintf(out[*n].name, sizeof(out[*n].name), "%s", name);
	out[*n].config_key = key;
	(*n)++;
}

/* Which plugins the config asks for; names were validated by config.c. */
static size_t plan_plugins(const sovmesh_config *cfg, plugin_choice *out)
{
	size_t n = 0;
	if (cfg->inference_backend[0])
		plan_add(out, &n, SOVMESH_KIND_BACKEND, cfg->inference_backend, "inference.backend");
	if (cfg->cache_enabled && cfg->cache_plugin[0])
		plan_add(out, &n, SOVMESH_KIND_CACHE, cfg->cache_plugin, "cache.plugin");
	if (cfg->mesh_enabled) {
		char buf[512];
		snprintf(buf, sizeof(buf), "%s", cfg->mesh_discovery);
		char *save = NULL;
		for (char *t = strtok_r(buf, ", ", &save); t; t = strtok_r(NULL, ", ", &save))
			plan_add(out, &n, SOVMESH_KIND_DISCOVERY, t, "mesh.discovery");
	}
	if (cfg->fl_enabled) {
		plan_add(out, &n, SOVMESH_KIND_AGGREGATOR, cfg->aggregation_method,
		         "federated_learning.aggregation_method");
		plan_add(out, &n, SOVMESH_KIND_NOISE, cfg->noise_mechanism,
		         "federated_learning.noise_mechanism");
		plan_add(out, &n, SOVMESH_KIND_TRAINER, cfg->fl_trainer, "federated_learning.trainer");
	}
	return n;
}

/*
 * Load (and in check-only mode, only check) the plugins the config names,
 * validate their plugin_settings sections, and refuse sections for
 * plugins that are not in use.  On success the loaded plugins and their
 * settings are returned through the arrays (caller owns).
 */
static int load_plugins(const sovmesh_config *cfg, loaded_plugin **plugins,
                        plugin_settings **settings, size_t *count, sovmesh_error *err)
{
	plugin_choice plan[DAEMON_MAX_PLUGINS];
	size_t n = plan_plugins(cfg, plan);
	plugin_search_path sp = {0};
	int r = plugin_search_path_build((const char *const *)cfg->plugin_path,
	                                 cfg->plugin_path_len, &sp);
	if (r < 0)
		return sovmesh_fail(err, r, "cannot build the plugin search path: %s",
		                    strerror(-r));
	*count = 0;
	for (size_t i = 0; i < n; i++) {
		loaded_plugin *lp = NULL;
		r = plugin_load_by_name(&sp, plan[i].kind, plan[i].name, &lp, err);
		if (r < 0)
			goto fail;
		plugin_settings *ps = NULL;
		r = plugin_settings_from_config(lp->label, lp->desc->settings,
		                                config_plugin_section(cfg, lp->label), &ps, err);
		if (r < 0) {
			plugin_release(lp, 1);
			goto fail;
		}
		plugins[*count] = lp;
		settings[*count] = ps;
		(*count)++;
	}

	/* A settings section for a plugin nobody loads is a typo or a stale
	 * config: say so instead of ignoring it. */
	const config_setting_t *group = config_lookup(&cfg->tree, "plugin_settings");
	for (int i = 0; group && i < config_setting_length(group); i++) {
		const config_setting_t *s = config_setting_get_elem(group, (unsigned)i);
		const char *label = config_setting_name(s);
		int used = 0;
		for (size_t k = 0; k < *count; k++)
			used |= strcmp(plugins[k]->label, label) == 0;
		if (!used) {
			char in_use[256] = "";
			for (size_t k = 0; k < *count; k++)
				snprintf(in_use + strlen(in_use), sizeof(in_use) - strlen(in_use),
				         "%s%s", k ? ", " : "", plugins[k]->label);
			r = sovmesh_fail(err, -EINVAL,
			                 "%s:%d: plugin_settings.%s: no plugin of that name is in "
			                 "use (in use: %s)",
			                 cfg->source, config_setting_source_line(s), label,
			                 *count ? in_use : "none");
			goto fail;
		}
	}
	plugin_search_path_free(&sp);
	return 0;
fail:
	for (size_t k = 0; k < *count; k++) {
		plugin_settings_free(settings[k]);
		plugin_release(plugins[k], 1);
	}
	*count = 0;
	plugin_search_path_free(&sp);
	return r;
}

/* mkdir -p with 0700 for what we create; an existing state dir that
 * others can read is tightened (secrets live there, DESIGN.md §6.7). */
static int ensure_private_dir(const char *path, sovmesh_error *err)
{
	char buf[4096];
	if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
		return sovmesh_fail(err, -ENAMETOOLONG, "%s: path too long", path);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return sovmesh_fail(err, -errno, "cannot create %s: %s", buf,
			                    strerror(errno));
		*p = '/';
	}
	if (mkdir(buf, 0700) < 0 && errno != EEXIST)
		return sovmesh_fail(err, -errno, "cannot create state directory %s: %s", buf,
		                    strerror(errno));
	struct stat st;
	if (stat(buf, &st) < 0)
		return sovmesh_fail(err, -errno, "state directory %s: %s", buf, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return sovmesh_fail(err, -ENOTDIR, "state directory %s is not a directory", buf);
	if (st.st_uid != geteuid())
		return sovmesh_fail(err, -EPERM,
		                    "state directory %s belongs to uid %u, not to this user", buf,
		                    (unsigned)st.st_uid);
	if ((st.st_mode & 0077) != 0) {
		log_warning("state directory %s was mode %03o; setting 0700", buf,
		            (unsigned)(st.st_mode & 0777));
		if (chmod(buf, 0700) < 0)
			return sovmesh_fail(err, -errno, "cannot chmod %s: %s", buf,
			                    strerror(errno));
	}
	return 0;
}

/* Short kind names for the control API and `sovmesh plugins`. */
static const char *kind_name(uint32_t kind)
{
	switch (kind) {
	case SOVMESH_KIND_DISCOVERY:
		return "discovery";
	case SOVMESH_KIND_BACKEND:
		return "backend";
	case SOVMESH_KIND_CACHE:
		return "cache";
	case SOVMESH_KIND_AGGREGATOR:
		return "aggregator";
	case SOVMESH_KIND_NOISE:
		return "noise";
	case SOVMESH_KIND_TRAINER:
		return "trainer";
	default:
		return "unknown";
	}
}

/* ---- control API handlers ---- */

static json_t *plugin_json(const plugin_instance *pi)
{
	const sovmesh_plugin_descriptor *d = pi->plugin->desc;
	char abi[32];
	snprintf(abi, sizeof(abi), "%u.%u", d->abi_major, d->abi_minor);
	json_t *settings = json_array();
	for (size_t i = 0; pi->settings && i < pi->settings->count; i++) {
		const plugin_setting_value *v = &pi->settings->values[i];
		char value[64];
		const char *text = value;
		switch (v->def->type) {
		case SOVMESH_SETTING_BOOL:
			text = v->b ? "true" : "false";
			break;
		case SOVMESH_SETTING_INT:
			snprintf(value, sizeof(value), "%lld", (long long)v->i);
			break;
		case SOVMESH_SETTING_DOUBLE:
			snprintf(value, sizeof(value), "%.17g", v->d);
			break;
		default:
			text = v->s ? v->s : "";
			break;
		}
		json_array_append_new(
		    settings,
		    json_pack("{s:s, s:s, s:s, s:b, s:s}", "name", v->def->name, "value", text,
		              "default", v->def->default_value ? v->def->default_value : "",
		              "given", v->given, "help", v->def->help ? v->def->help : ""));
	}
	return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:o}", "kind",
	                 kind_name(pi->plugin->kind), "label", pi->plugin->label, "name", d->name,
	                 "version", d->version ? d->version : "", "license",
	                 d->license ? d->license : "", "description",
	                 d->description ? d->description : "", "abi", abi, "file", pi->plugin->path,
	                 "settings", settings);
}

static int handle_plugins(void *ud, const control_request *req, json_t **reply, int *status)
{
	(void)req;
	daemon_state *d = ud;
	json_t *list = json_array();
	for (size_t i = 0; i < d->n_plugins; i++)
		json_array_append_new(list, plugin_json(d->plugins[i]));
	*reply = json_pack("{s:o}", "plugins", list);
	*status = 200;
	return 0;
}

static int handle_status(void *ud, const control_request *req, json_t **reply, int *status)
{
	(void)req;
	daemon_state *d = ud;
	uint64_t up_ms = uv_now(&d->loop) - d->started_ms;
	*reply =
	    json_pack("{s:s, s:s, s:I, s:I, s:s, s:s, s:s, s:s, s:b, s:b, s:I, s:s}", "version",
	              SOVMESH_VERSION, "node_name", d->cfg->node_name, "pid", (json_int_t)getpid(),
	              "uptime_secs", (json_int_t)(up_ms / 1000), "state_dir", d->cfg->state_dir,
	              "config", d->cfg->source, "control_socket", d->cfg->control_socket,
	              "log_level", log_level_name(log_get_level()), "mesh_enabled",
	              d->cfg->mesh_enabled, "federated_learning_enabled", d->cfg->fl_enabled,
	              "plugins_loaded", (json_int_t)d->n_plugins, "plugin_abi", "1.0");
	thermal_state ts;
	thermal_read(d->cfg->thermal_sysfs_root, d->cfg->thermal_limit_c, &ts);
	json_object_set_new(*reply, "thermal",
	                    json_pack("{s:b, s:b, s:o}", "hot", ts.hot, "throttled", ts.throttled,
	                              "temp_c", ts.has_temp ? json_real(ts.temp_c) : json_null()));
	if (d->inf)
		json_object_set_new(*reply, "inference", inference_service_status(d->inf));
	json_object_set_new(*reply, "federated_learning",
	                    d->fl ? fl_service_status(d->fl) : json_pack("{s:b}", "enabled", 0));
	*status = 200;
	return 0;
}

/* ---- shutdown and reload ---- */

static void on_control_closed(void *ud)
{
	daemon_state *d = ud;
	d->control_server = NULL;
}

/* Stop the peer port and the peer client; their handles close on the
 * loop, after which identity and trust store may be freed. */
static void on_peer_port_closed(void *ud)
{
	daemon_state *d = ud;
	/* The serving side's pending answers are cancelled by now. */
	inference_service_free(d->inf);
	d->inf = NULL;
	fl_service_free(d->fl);
	d->fl = NULL;
	peer_health_free(d->health);
	d->health = NULL;
}

static void close_peer_network(daemon_state *d)
{
	/* Inference first (it calls peers through the client and the
	 * table), then discovery (it reports into the table), then the
	 * table (it calls through the client), then the port and the
	 * client. */
	inference_service_stop(d->inf);
	fl_service_stop(d->fl);
	discovery_host_free(d->disc);
	d->disc = NULL;
	if (d->ptable) {
		peer_table *t = d->ptable;
		d->ptable = NULL;
		peer_table_free(t, NULL, NULL);
	}
	if (d->peer_port)
		peer_transport_close(d->peer_port, on_peer_port_closed, d);
	else if (d->health || d->inf || d->fl) {
		inference_service_free(d->inf);
		d->inf = NULL;
		fl_service_free(d->fl);
		d->fl = NULL;
		peer_health_free(d->health);
		d->health = NULL;
	}
	d->peer_port = NULL;
	if (d->peers)
		peer_client_free(d->peers, NULL, NULL);
	d->peers = NULL;
	control_pairing_stop(d->control_pairing);
}

static void close_signals(daemon_state *d);

static void begin_shutdown(daemon_state *d, const char *why)
{
	if (d->stopping)
		return;
	d->stopping = 1;
	log_notice("%s: shutting down", why);
	if (d->control) {
		control_api_free(d->control);
		d->control = NULL;
	}
	if (d->control_server)
		http_server_close(d->control_server, on_control_closed, d);
	close_peer_network(d);
	close_signals(d);
}

/* Keys a running daemon can apply without a restart: the log level.
 * Everything else is compared and reported. */
static void report_change(const char *key, int changed)
{
	if (changed)
		log_warning("reload: %s changed; restart sovmeshd to apply it", key);
}

static int str_changed(const char *a, const char *b)
{
	return strcmp(a ? a : "", b ? b : "") != 0;
}

static void reload(daemon_state *d)
{
	sovmesh_error err = {0};
	sovmesh_config *next = NULL;
	if (config_load(d->config_path, &next, &err) < 0) {
		log_error("reload refused, keeping the running configuration: %s", err.message);
		return;
	}
	sovmesh_config *cur = d->cfg;
	if (d->opts->log_level < 0 && next->log_level != cur->log_level) {
		log_set_level(next->log_level);
		log_notice("reload: log level is now %s", log_level_name(next->log_level));
	}
	report_change("node.name", str_changed(cur->node_name, next->node_name));
	report_change("node.state_dir", str_changed(cur->state_dir, next->state_dir));
	report_change("control.socket", str_changed(cur->control_socket, next->control_socket));
	int path_changed = cur->plugin_path_len != next->plugin_path_len;
	for (size_t i = 0; !path_changed && i < cur->plugin_path_len; i++)
		path_changed = str_changed(cur->plugin_path[i], next->plugin_path[i]);
	report_change("node.plugin_path", path_changed);
	report_change("mesh.enabled", cur->mesh_enabled != next->mesh_enabled);
	report_change("mesh.discovery", str_changed(cur->mesh_discovery, next->mesh_discovery));
	report_change("api.enabled", cur->api_enabled != next->api_enabled);
	report_change("api.listen", str_changed(cur->api_listen, next->api_listen));
	report_change("api.max_body_bytes", cur->api_max_body_bytes != next->api_max_body_bytes);
	report_change("inference.backend",
	              str_changed(cur->inference_backend, next->inference_backend));
	report_change("inference.default_model",
	              str_changed(cur->inference_default_model, next->inference_default_model));
	report_change("cache.enabled", cur->cache_enabled != next->cache_enabled);
	report_change("cache.plugin", str_changed(cur->cache_plugin, next->cache_plugin));
	report_change("cache.embedding_model",
	              str_changed(cur->cache_embedding_model, next->cache_embedding_model));
	report_change("cache.hit_similarity", cur->cache_hit_similarity != next->cache_hit_similarity);
	report_change("cache.near_miss_similarity",
	              cur->cache_near_miss_similarity != next->cache_near_miss_similarity);
	report_change("cache.model_hit_similarity",
	              cur->cache_model_hit_similarity != next->cache_model_hit_similarity);
	report_change("cache.model_near_miss_similarity",
	              cur->cache_model_near_miss_similarity != next->cache_model_near_miss_similarity);
	report_change("template.enabled", cur->template_enabled != next->template_enabled);
	report_change("template.text", str_changed(cur->template_text, next->template_text));
	report_change("template.near_miss_text",
	              str_changed(cur->template_near_miss_text, next->template_near_miss_text));
	report_change("mesh.peer_listen", str_changed(cur->peer_listen, next->peer_listen));
	report_change("pairing.listen", str_changed(cur->pairing_listen, next->pairing_listen));
	report_change("pairing.code_ttl_secs",
	              cur->pairing_code_ttl_secs != next->pairing_code_ttl_secs);
	report_change("pairing.max_attempts",
	              cur->pairing_max_attempts != next->pairing_max_attempts);
	report_change("federated_learning.enabled", cur->fl_enabled != next->fl_enabled);
	report_change("federated_learning.aggregation_method",
	              str_changed(cur->aggregation_method, next->aggregation_method));
	report_change("federated_learning.noise_mechanism",
	              str_changed(cur->noise_mechanism, next->noise_mechanism));
	report_change("federated_learning.trainer", str_changed(cur->fl_trainer, next->fl_trainer));
	report_change("federated_learning.train_timeout_secs",
	              cur->train_timeout_secs != next->train_timeout_secs);
	report_change("federated_learning.base_model",
	              str_changed(cur->fl_base_model, next->fl_base_model));
	report_change("federated_learning.adapted_model",
	              str_changed(cur->fl_adapted_model, next->fl_adapted_model));

	/* Plugin settings are read by plugins at create(): compare the
	 * validated values and report differences. */
	for (size_t i = 0; i < d->n_plugins; i++) {
		plugin_instance *pi = d->plugins[i];
		plugin_settings *ps = NULL;
		sovmesh_error serr = {0};
		if (plugin_settings_from_config(pi->plugin->label, pi->plugin->desc->settings,
		                                config_plugin_section(next, pi->plugin->label), &ps,
		                                &serr) < 0) {
			log_error("reload: %s", serr.message);
			continue;
		}
		for (size_t k = 0; k < ps->count; k++) {
			const plugin_setting_value *a = &pi->settings->values[k],
			                           *b = &ps->values[k];
			int changed =
			    a->b != b->b || a->i != b->i || a->d != b->d || str_changed(a->s, b->s);
			if (changed)
				log_warning(
				    "reload: plugin_settings.%s.%s changed; restart sovmeshd "
				    "to apply it",
				    pi->plugin->label, a->def->name);
		}
		plugin_settings_free(ps);
	}
	/* Applied at once: the log level and mesh inference's limits.  The
	 * running config keeps those new values and the old everything else. */
	inference_service_reload(d->inf, next);
	fl_service_reload(d->fl, next);
	cur->sync_after_n_samples = next->sync_after_n_samples;
	cur->max_peers = next->max_peers;
	cur->noise_epsilon = next->noise_epsilon;
	cur->noise_clip = next->noise_clip;
	cur->privacy_budget = next->privacy_budget;
	cur->aggregation_wait_secs = next->aggregation_wait_secs;
	cur->max_delta_bytes = next->max_delta_bytes;
	cur->log_level = next->log_level;
	cur->serve_inference = next->serve_inference;
	cur->max_concurrent_peer_requests = next->max_concurrent_peer_requests;
	cur->request_timeout_secs = next->request_timeout_secs;
	cur->thermal_limit_c = next->thermal_limit_c;
	char *root = next->thermal_sysfs_root;
	next->thermal_sysfs_root = cur->thermal_sysfs_root;
	cur->thermal_sysfs_root = root;
	config_free(next);
	log_notice("reload: configuration %s re-read",
	           d->config_path ? d->config_path : "<embedded default>");
}

static void on_signal(uv_signal_t *h, int signum)
{
	daemon_state *d = h->data;
	if (signum == SIGHUP)
		reload(d);
	else
		begin_shutdown(d, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

/* ---- start-up ---- */

/*
 * The socket is 0600 in a 0700 directory already; checking the caller's
 * uid as well keeps control owner-only even if someone loosens the
 * modes (DESIGN.md §6.6).
 */
static void control_socket_handler(void *ud, const http_request *req, http_response *resp)
{
	daemon_state *d = ud;
	if (!req->has_cred || (req->uid != geteuid() && req->uid != 0)) {
		log_warning("control socket: refused a request from uid %u",
		            req->has_cred ? (unsigned)req->uid : (unsigned)-1);
		http_response_send_error(resp, 403, "only the daemon's user may control it");
		return;
	}
	control_api_http_handler(d->control, req, resp);
}

static int start_control(daemon_state *d, sovmesh_error *err)
{
	int r = control_api_new(NULL, &d->control);
	if (r < 0)
		return sovmesh_fail(err, r, "cannot create the control API: %s", strerror(-r));
	if (control_api_route(d->control, "GET", "/v1/status", handle_status, d) < 0 ||
	    control_api_route(d->control, "GET", "/v1/plugins", handle_plugins, d) < 0)
		return sovmesh_fail(err, -ENOMEM, "out of memory");

	http_server_options o = {
	    .handler = control_socket_handler,
	    .handler_ud = d,
	    .name = "control",
	};
	r = http_server_new(&d->loop, &o, &d->control_server);
	if (r < 0)
		return sovmesh_fail(err, r, "cannot create the control server: %s", strerror(-r));
	return http_server_listen_unix(d->control_server, d->cfg->control_socket, err);
}

/* The trust store has one change listener: fan it out. */
static void on_trust_change(void *ud, const trusted_peer *p, int removed)
{
	daemon_state *d = ud;
	if (d->peers)
		peer_client_trust_changed(d->peers, p, removed);
	if (d->ptable)
		peer_table_trust_changed(d->ptable, p, removed);
}

/* Tell discovery (TXT pair=) whether a pairing code is outstanding. */
static void on_pairing_port(void *ud, uint16_t port)
{
	daemon_state *d = ud;
	if (d->disc)
		discovery_host_set_pairing_port(d->disc, port);
}

/* Health answers carry this node's thermal state, read when asked. */
static void health_thermal(void *ud, int *hot, int *has_temp, double *temp_c)
{
	daemon_state *d = ud;
	thermal_state ts;
	thermal_read(d->cfg->thermal_sysfs_root, d->cfg->thermal_limit_c, &ts);
	*hot = ts.hot;
	*has_temp = ts.has_temp;
	*temp_c = ts.temp_c;
}

/* Identity, trust store, peer client and the mutual-TLS peer port. */
static int start_peer_network(daemon_state *d, sovmesh_error *err)
{
	int r = identity_load_or_create(d->cfg->state_dir, d->cfg->node_name, &d->id, err);
	if (r < 0)
		return r;
	r = trust_store_open(d->cfg->state_dir, &d->trust, err);
	if (r < 0)
		return r;
	r = peer_client_new(&d->loop, d->id, d->trust, &d->peers);
	if (r < 0)
		return sovmesh_fail(err, r, "cannot create the peer client: %s", strerror(-r));
	/* Deltas are the largest peer requests; everything else fits 1 MiB.
	 * Room for twice the delta limit, so an oversized delta reaches the
	 * handler and is refused with a log line (larger still: the HTTP
	 * server's plain 413). */
	size_t max_body = 1u << 20;
	if (d->cfg->fl_enabled && 2 * (size_t)d->cfg->max_delta_bytes + 4096 > max_body)
		max_body = 2 * (size_t)d->cfg->max_delta_bytes + 4096;
	peer_transport_options o = {
	    .listen = d->cfg->peer_listen,
	    .max_body_bytes = max_body,
	    .on_trust_change = on_trust_change,
	    .on_trust_change_ud = d,
	};
	r = peer_transport_new(&d->loop, d->id, d->trust, &o, &d->peer_port, err);
	if (r < 0)
		return r;
	peer_health_providers prov = {.ud = d, .thermal = health_thermal};
	r = peer_health_register(d->peer_port, d->id, d->cfg->max_concurrent_peer_requests, &prov,
	                         &d->health);
	if (r < 0)
		return sovmesh_fail(err, r, "cannot serve health checks: %s", strerror(-r));
	peer_table_options pto = {.interval_ms = (unsigned)d->cfg->health_interval_ms};
	r = peer_table_new(&d->loop, d->trust, d->peers, d->id->fingerprint_hex, &pto, &d->ptable);
	if (r < 0)
		return sovmesh_fail(err, r, "cannot create the peer table: %s", strerror(-r));
	control_trust_ctx tctx = {
	    .id = d->id,
	    .ts = d->trust,
	    .pc = d->peers,
	    .ptable = d->ptable,
	    .peer_port = peer_transport_port(d->peer_port),
	};
	r = control_trust_new(d->control, &tctx, &d->control_trust);
	if (r < 0)
		return sovmesh_fail(err, r, "cannot register the trust endpoints: %s",
		                    strerror(-r));
	control_pairing_ctx pctx = {
	    .id = d->id,
	    .ts = d->trust,
	    .pairing_listen = d->cfg->pairing_listen,
	    .peer_listen = d->cfg->peer_listen,
	    .peer_port = peer_transport_port(d->peer_port),
	    .code_ttl_secs = (unsigned)d->cfg->pairing_code_ttl_secs,
	    .max_attempts = (unsigned)d->cfg->pairing_max_attempts,
	    .ptable = d->ptable,
	    .on_pairing_port = on_pairing_port,
	    .ud = d,
	};
	r = control_pairing_new(&d->loop, d->control, &pctx, &d->control_pairing, err);
	if (r < 0)
		return r;
	plugin_instance *backend = NULL, *cache = NULL;
	for (size_t i = 0; i < d->n_plugins; i++) {
		if (d->plugins[i]->plugin->kind == SOVMESH_KIND_BACKEND)
			backend = d->plugins[i];
		if (d->plugins[i]->plugin->kind == SOVMESH_KIND_CACHE)
			cache = d->plugins[i];
	}
	inference_service_ctx ictx = {
	    .loop = &d->loop,
	    .cfg = d->cfg,
	    .backend = backend,
	    .cache = cache,
	    .id = d->id,
	    .trust = d->trust,
	    .pc = d->cfg->mesh_enabled ? d->peers : NULL,
	    .ptable = d->cfg->mesh_enabled ? d->ptable : NULL,
	    .peer_port = d->cfg->mesh_enabled ? d->peer_port : NULL,
	    .health = d->health,
	    .control = d->control,
	};
	r = inference_service_start(&ictx, &d->inf, err);
	if (r < 0)
		return r;
	if (d->cfg->fl_enabled) {
		fl_service_ctx fctx = {
		    .loop = &d->loop,
		    .cfg = d->cfg,
		    .backend = backend,
		    .id = d->id,
		    .trust = d->trust,
		    .pc = d->cfg->mesh_enabled ? d->peers : NULL,
		    .ptable = d->cfg->mesh_enabled ? d->ptable : NULL,
		    .peer_port = d->cfg->mesh_enabled ? d->peer_port : NULL,
		    .health = d->health,
		    .control = d->control,
		};
		for (size_t i = 0; i < d->n_plugins; i++) {
			plugin_instance *pi = d->plugins[i];
			if (pi->plugin->kind == SOVMESH_KIND_TRAINER)
				fctx.trainer = pi;
			else if (pi->plugin->kind == SOVMESH_KIND_NOISE)
				fctx.noise = pi;
			else if (pi->plugin->kind == SOVMESH_KIND_AGGREGATOR)
				fctx.aggregator = pi;
		}
		r = fl_service_start(&fctx, &d->fl, err);
		if (r < 0)
			return r;
		inference_service_set_feedback(d->inf, fl_service_feedback_http, d->fl);
	} else {
		r = fl_service_register_disabled(d->control);
		if (r < 0)
			return sovmesh_fail(err, r, "cannot register the federated-learning "
			                            "endpoints: %s", strerror(-r));
	}
	log_info("node '%s' fingerprint %s (%s); %zu paired peer%s", d->id->node_name,
	         d->id->fingerprint_hex, d->id->short_fp, trust_store_count(d->trust),
	         trust_store_count(d->trust) == 1 ? "" : "s");
	return 0;
}

/* Run the discovery plugins among the created instances. */
static int start_discovery(daemon_state *d, sovmesh_error *err)
{
	int r = discovery_host_new(d->rt, peer_table_discovery_event, d->ptable, &d->disc);
	if (r < 0)
		return sovmesh_fail(err, r, "cannot start discovery: %s", strerror(-r));
	for (size_t i = 0; i < d->n_plugins; i++) {
		if (d->plugins[i]->plugin->kind != SOVMESH_KIND_DISCOVERY)
			continue;
		r = discovery_host_add(d->disc, d->plugins[i], 0, err);
		if (r < 0)
			return r;
	}
	discovery_self self = {
	    .node_name = d->id->node_name,
	    .fingerprint = d->id->fingerprint_hex,
	    .peer_port = (uint16_t)peer_transport_port(d->peer_port),
	};
	return discovery_host_start(d->disc, &self, err);
}

/* Installed before anything listens: a signal that arrives while the
 * daemon is still starting (as soon as the control socket answers) is
 * then queued for the loop instead of killing the process. */
static int start_signals(daemon_state *d)
{
	uv_signal_t *hs[] = {&d->sig_int, &d->sig_term, &d->sig_hup};
	int sigs[] = {SIGINT, SIGTERM, SIGHUP};
	for (size_t i = 0; i < 3; i++) {
		uv_signal_init(&d->loop, hs[i]);
		hs[i]->data = d;
	}
	d->signals_ready = 1;
	for (size_t i = 0; i < 3; i++) {
		int r = uv_signal_start(hs[i], on_signal, sigs[i]);
		if (r < 0)
			return r;
	}
	return 0;
}

static void close_signals(daemon_state *d)
{
	if (!d->signals_ready)
		return;
	d->signals_ready = 0;
	uv_close((uv_handle_t *)&d->sig_int, NULL);
	uv_close((uv_handle_t *)&d->sig_term, NULL);
	uv_close((uv_handle_t *)&d->sig_hup, NULL);
}

static void free_plugins(daemon_state *d)
{
	/* Reverse order of creation. */
	while (d->n_plugins > 0)
		plugin_instance_free(d->plugins[--d->n_plugins]);
}

int daemon_run(const daemon_options *opts)
{
	daemon_state d;
	sovmesh_error err = {0};
	loaded_plugin *plugins[DAEMON_MAX_PLUGINS];
	plugin_settings *settings[DAEMON_MAX_PLUGINS];
	size_t n_loaded = 0;
	int rc = 1, loop_ready = 0;

	memset(&d, 0, sizeof(d));
	d.opts = opts;
	/* A peer that vanished makes a write fail with EPIPE; without this
	 * the default SIGPIPE action would kill the daemon instead. */
	signal(SIGPIPE, SIG_IGN);
	d.config_path = daemon_config_path(opts);
	if (opts->log_level >= 0)
		log_set_level(opts->log_level);

	if (config_load(d.config_path, &d.cfg, &err) < 0) {
		log_error("%s", err.message);
		return 1;
	}
	if (opts->log_level < 0)
		log_set_level(d.cfg->log_level);

	if (load_plugins(d.cfg, plugins, settings, &n_loaded, &err) < 0) {
		log_error("%s", err.message);
		goto out;
	}
	if (opts->check_only) {
		for (size_t i = 0; i < n_loaded; i++) {
			plugin_settings_free(settings[i]);
			plugin_release(plugins[i], 1);
		}
		printf("%s: configuration OK (%zu plugin%s checked)\n", d.cfg->source, n_loaded,
		       n_loaded == 1 ? "" : "s");
		rc = 0;
		goto out;
	}

	if (ensure_private_dir(d.cfg->state_dir, &err) < 0) {
		log_error("%s", err.message);
		goto out_plugins;
	}
	int r = uv_loop_init(&d.loop);
	if (r < 0) {
		log_error("cannot start the event loop: %s", uv_strerror(r));
		goto out_plugins;
	}
	loop_ready = 1;
	d.started_ms = uv_now(&d.loop);
	r = host_runtime_new(&d.loop, d.cfg->state_dir, d.cfg->node_name, &d.rt);
	if (r < 0) {
		log_error("cannot start the plugin host: %s", strerror(-r));
		goto out_plugins;
	}
	r = start_signals(&d);
	if (r < 0) {
		log_error("cannot install signal handlers: %s", uv_strerror(r));
		goto out_runtime;
	}
	/* Instances take ownership of their plugin and settings, even on
	 * failure, so the arrays are emptied as we go. */
	for (size_t i = 0; i < n_loaded; i++) {
		plugin_instance *pi = NULL;
		loaded_plugin *lp = plugins[i];
		plugin_settings *ps = settings[i];
		plugins[i] = NULL;
		settings[i] = NULL;
		if (plugin_instance_new(d.rt, lp, ps, &pi, &err) < 0) {
			log_error("%s", err.message);
			for (size_t k = i + 1; k < n_loaded; k++) {
				plugin_settings_free(settings[k]);
				plugin_release(plugins[k], 1);
			}
			n_loaded = 0;
			goto out_runtime;
		}
		d.plugins[d.n_plugins++] = pi;
		log_info("plugin %s %s loaded from %s", pi->plugin->label,
		         pi->plugin->desc->version ? pi->plugin->desc->version : "",
		         pi->plugin->path);
	}
	n_loaded = 0;

	/* The control socket first: a second daemon on the same state
	 * directory is refused there with a clear message. */
	if (start_control(&d, &err) < 0 || start_peer_network(&d, &err) < 0 ||
	    start_discovery(&d, &err) < 0) {
		log_error("%s", err.message);
		goto out_runtime;
	}
	log_notice("sovmeshd %s started: node '%s', state %s, control socket %s, config %s",
	           SOVMESH_VERSION, d.cfg->node_name, d.cfg->state_dir, d.cfg->control_socket,
	           d.cfg->source);
	uv_run(&d.loop, UV_RUN_DEFAULT);
	rc = 0;

out_runtime:
	if (!d.stopping) {
		/* Start-up failed after the loop existed: close what is open. */
		if (d.control)
			control_api_free(d.control);
		d.control = NULL;
		if (d.control_server)
			http_server_close(d.control_server, on_control_closed, &d);
		close_peer_network(&d);
		close_signals(&d);
		uv_run(&d.loop, UV_RUN_DEFAULT);
	}
	control_trust_free(d.control_trust);
	control_pairing_free(d.control_pairing);
	/* Normally freed when the peer port closed; a failed start may
	 * leave it.  Before the plugins: it calls the backend. */
	inference_service_free(d.inf);
	d.inf = NULL;
	free_plugins(&d);
	host_runtime_free(d.rt);
out_plugins:
	for (size_t i = 0; i < n_loaded; i++) {
		plugin_settings_free(settings[i]);
		plugin_release(plugins[i], 1);
	}
	if (loop_ready) {
		uv_run(&d.loop, UV_RUN_DEFAULT);
		int cr = uv_loop_close(&d.loop);
		if (cr < 0) {
			log_error("event loop did not close cleanly: %s", uv_strerror(cr));
			rc = 1;
		} else if (rc == 0) {
			log_notice("stopped cleanly");
		}
	}
out:
	trust_store_free(d.trust);
	identity_free(d.id);
	config_free(d.cfg);
	return rc;
}
