/*
 * sovmeshd's life cycle: configuration, state directory, plugins, the
 * control socket, signals (SIGINT/SIGTERM: clean shutdown; SIGHUP:
 * reload what can be reloaded), and the event loop.
 */
#ifndef SOVMESH_CORE_DAEMON_H
#define SOVMESH_CORE_DAEMON_H

typedef struct daemon_options {
	const char *config_path; /* -c FILE, or NULL */
	int check_only;          /* --check-config */
	int log_level;           /* --log-level, or -1 to use the config's */
} daemon_options;

/* Run the daemon (or only check the config).  Returns the process exit
 * status: 0 after a clean shutdown or a valid config, 1 on any start-up
 * error (already logged as one line naming file and reason). */
int daemon_run(const daemon_options *opts);

/* Which config file applies: opts->config_path, else the system config if
 * it exists, else NULL (the embedded default). */
const char *daemon_config_path(const daemon_options *opts);

#endif
