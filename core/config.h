/*
 * The daemon's configuration (libconfig syntax): every key is declared in
 * config.c's schema with its type, range and default; unknown keys and
 * wrong types are errors naming file, line and key.  Without a file the
 * embedded default config (config_default.conf, compiled in) is used.
 * docs/configuration.md lists every key.
 */
#ifndef SOVMESH_CORE_CONFIG_H
#define SOVMESH_CORE_CONFIG_H

#include <libconfig.h>
#include <stdint.h>
#include <sovmesh/plugin.h>

typedef struct sovmesh_config {
	/* Where the values came from: a path, or "<embedded default>". */
	char *source;

	/* node */
	char *node_name;     /* default: the host name */
	char *state_dir;     /* default: /var/lib/sovmesh as root, else
	                        $XDG_STATE_HOME/sovmesh or ~/.local/state/sovmesh */
	int log_level;       /* SOVMESH_LOG_*, default INFO */
	char **plugin_path;  /* NULL-terminated list, may be empty */
	size_t plugin_path_len;

	/* control */
	char *control_socket; /* default <state_dir>/control.sock */

	/* mesh (DESIGN.md §5 seed keys) */
	int mesh_enabled;
	char *mesh_discovery; /* comma-separated discovery plugin names, may be "" */
	int64_t health_interval_ms;
	double thermal_limit_c;    /* a zone at or above this is "hot" */
	char *thermal_sysfs_root;  /* "/sys"; tests point it at a fake tree */
	int serve_inference;
	int64_t max_concurrent_peer_requests;
	int64_t request_timeout_secs;
	char *peer_listen;    /* mutual-TLS peer port, "host:port" */

	/* api: the loopback HTTP port (front door, control mirror, page) */
	int api_enabled;
	char *api_listen;        /* "127.0.0.1:11435" */
	int64_t api_max_body_bytes;

	/* inference */
	char *inference_backend;       /* backend plugin name, "" = none */
	char *inference_default_model; /* for `sovmesh ask` without --model; "" = first listed */

	/* cache: step 3 of the fallback chain */
	int cache_enabled;
	char *cache_plugin;          /* cache plugin name, "" = none */
	char *cache_embedding_model; /* "" = the cache's built-in embedding only */
	double cache_hit_similarity, cache_near_miss_similarity;             /* built-in */
	double cache_model_hit_similarity, cache_model_near_miss_similarity; /* model */

	/* template: step 4 */
	int template_enabled;
	char *template_text;
	char *template_near_miss_text; /* {question} and {answer} are replaced */

	/* pairing */
	char *pairing_listen; /* TLS-SRP listener, open only while a code is outstanding */
	int64_t pairing_code_ttl_secs;
	int64_t pairing_max_attempts;

	/* federated_learning (DESIGN.md §5 seed keys, then ours) */
	int fl_enabled;
	int64_t sync_after_n_samples;
	int64_t max_peers;
	double noise_epsilon;
	char *aggregation_method;
	char *noise_mechanism;
	double noise_clip;
	double noise_delta;             /* δ per sync (Gaussian noise; 0 for Laplace) */
	char *fl_accountant;            /* "basic" | "rdp" (privacy_accountant.h) */
	double target_delta;            /* δ the RDP accountant converts to */
	int allow_no_noise;             /* noise_mechanism "none" is refused unless set */
	double privacy_budget;          /* total ε of a budget period (fl_store.h) */
	char *fl_trainer;               /* plugin trainer-<name>.so */
	int64_t train_timeout_secs;
	int64_t aggregation_wait_secs;  /* how long a round waits for peers' deltas */
	int64_t max_delta_bytes;        /* largest sealed delta accepted from a peer */
	char *fl_base_model;            /* "" = inference.default_model, else the first local model */
	char *fl_adapted_model;         /* "" = <base name>-sovmesh[:<tag>] */

	/* The parsed tree, kept for plugin_settings.<label> sections (their
	 * keys are validated against each plugin's declared settings once the
	 * plugin is loaded) and for line numbers in later errors. */
	config_t tree;
} sovmesh_config;

/*
 * Load and validate `path`, or the embedded default when path is NULL.
 * On error err->message is one line "FILE:LINE: KEY: reason" (or
 * "FILE: reason" for I/O errors).  Caller frees with config_free().
 */
int config_load(const char *path, sovmesh_config **out, sovmesh_error *err);

/* Same from a string (tests, the embedded default); `name` labels errors. */
int config_load_string(const char *text, const char *name, sovmesh_config **out,
                       sovmesh_error *err);

/* The libconfig group plugin_settings.<label>, or NULL if absent. */
const config_setting_t *config_plugin_section(const sovmesh_config *cfg,
                                              const char *label);

/* The embedded default config text. */
const char *config_default_text(void);

void config_free(sovmesh_config *cfg);

#endif
