/*
 * The sovmesh command-line client's shared parts: options, errors, the
 * control-socket calls, JSON output.  One file per group of commands:
 * sovmesh_main.c (dispatch, status, plugins), cli_fl.c (offline FL
 * tools), cli_federated.c (feedback, fl status/rollback, budget),
 * cli_trust.c (id, peers, pairing).
 */
#ifndef SOVMESH_CORE_CLI_H
#define SOVMESH_CORE_CLI_H

#include <jansson.h>
#include <sovmesh/plugin.h>

#include "config.h"
#include "plugin_loader.h"

typedef struct cli {
	int json;                /* --json */
	const char *socket_path; /* --socket, or NULL: from the config */
	const char *config_path; /* -c, or NULL */
} cli;

/* Print "error: ..." on stderr; returns 1 (the exit status). */
int cli_fail(const char *fmt, ...) SOVMESH_PRINTF(1, 2);

/* The config the daemon would use: -c, else the system file, else the
 * embedded default.  0, or 1 after printing the error. */
int cli_load_config(const cli *c, sovmesh_config **cfg);

/* The plugin search path from that config.  0 or 1 (error printed). */
int cli_search_path(const cli *c, plugin_search_path *sp);

/*
 * Call the daemon: `body` (borrowed, may be NULL) as JSON.  On 0 *reply
 * is the JSON answer of a 2xx status (caller owns); otherwise the error
 * ("sovmeshd answered 404: ...") is printed and 1 returned.
 */
int cli_call(const cli *c, const char *method, const char *path, json_t *body, long timeout_ms,
             json_t **reply);

/* Pretty-print `j` to stdout. */
void cli_print_json(json_t *j);

/* obj[key] as a string, or "-". */
const char *cli_str(json_t *obj, const char *key);

int cli_cmd_fl(const cli *c, int argc, char **argv);
int cli_cmd_ask(const cli *c, int argc, char **argv);
int cli_cmd_cache(const cli *c, int argc, char **argv);
int cli_cmd_id(const cli *c, int argc, char **argv);
int cli_cmd_peers(const cli *c, int argc, char **argv);
int cli_cmd_pair(const cli *c, int argc, char **argv);
/* cli_network.c: the Settings -> Network page's address with its key. */
int cli_cmd_network(const cli *c, int argc, char **argv);

/* cli_federated.c: the daemon's federated learning.  Each takes the
 * command's own argv (argv[0] is the command) and returns the exit status:
 * 0, 1 (an error, printed) or 2 (a usage error, printed).  `fl` sends
 * aggregate/noise on to cli_cmd_fl. */
int cli_cmd_feedback(const cli *c, int argc, char **argv);
int cli_cmd_budget(const cli *c, int argc, char **argv);
int cli_cmd_fl_route(const cli *c, int argc, char **argv);

#endif
