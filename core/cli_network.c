/*
 * sovmesh network [--open]: the URL of the Settings -> Network page with
 * its key, as Jupyter does it.  The page itself holds no secret (any local
 * user can fetch it); the key that allows changes is the daemon's API
 * token (<state_dir>/api-token, 0600), which only the owner can read, and
 * it travels in the URL fragment, which the browser never sends.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"

static const char network_usage[] =
    "Usage: sovmesh network [--open] [--json]\n"
    "\n"
    "Print the address of the Settings -> Network page (peers, pairing,\n"
    "privacy budget), with the key that allows changes after '#key='.\n"
    "Anyone who has that address can change this node's peers until the\n"
    "daemon restarts: do not share it.\n"
    "\n"
    "  --open   open it in the desktop's browser (xdg-open)\n"
    "  --json   {\"url\": ..., \"api\": ...}\n";

/* The token file's one line of hex.  0 or 1 (error printed). */
static int read_token(const char *state_dir, char *tok, size_t len)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/api-token", state_dir);
	FILE *f = fopen(path, "r");
	if (!f)
		return cli_fail("cannot read %s: %s (run this as the user that runs sovmeshd)",
		                path, strerror(errno));
	char *ok = fgets(tok, (int)len, f);
	fclose(f);
	if (!ok)
		return cli_fail("%s is empty", path);
	tok[strcspn(tok, "\r\n")] = '\0';
	if (strlen(tok) < 16 || strspn(tok, "0123456789abcdef") != strlen(tok))
		return cli_fail("%s does not hold a token", path);
	return 0;
}

/* "host:port" as a browser may name it: a wildcard listen address is
 * reached through loopback (the front door refuses the name 0.0.0.0). */
static void url_host(const char *api, char *out, size_t len)
{
	const char *port = strrchr(api, ':');
	if (!port)
		port = "";
	if (strncmp(api, "0.0.0.0:", 8) == 0 || strncmp(api, "[::]:", 5) == 0)
		snprintf(out, len, "127.0.0.1%s", port);
	else
		snprintf(out, len, "%s", api);
}

static int open_url(const char *url)
{
	pid_t pid = fork();
	if (pid < 0)
		return cli_fail("cannot start xdg-open: %s", strerror(errno));
	if (pid == 0) {
		execlp("xdg-open", "xdg-open", url, (char *)NULL);
		fprintf(stderr, "error: cannot run xdg-open: %s\n", strerror(errno));
		_exit(127);
	}
	int st = 0;
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		return cli_fail("xdg-open could not open the page; open the address above by hand");
	return 0;
}

int cli_cmd_network(const cli *c, int argc, char **argv)
{
	int open = 0, json = c->json;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--open") == 0) {
			open = 1;
		} else if (strcmp(argv[i], "--json") == 0) {
			json = 1;
		} else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			fputs(network_usage, stdout);
			return 0;
		} else {
			cli_fail("network: unknown argument '%s'", argv[i]);
			fputs(network_usage, stderr);
			return 2;
		}
	}
	json_t *st = NULL;
	if (cli_call(c, "GET", "/v1/status", NULL, 0, &st))
		return 1;
	const char *api =
	    json_string_value(json_object_get(json_object_get(st, "inference"), "api"));
	const char *state_dir = json_string_value(json_object_get(st, "state_dir"));
	if (!api || !state_dir) {
		json_decref(st);
		return cli_fail("the daemon serves no HTTP port (api.listen is off), so there is "
		                "no Network page");
	}
	char tok[256], host[300], url[700];
	if (read_token(state_dir, tok, sizeof(tok))) {
		json_decref(st);
		return 1;
	}
	url_host(api, host, sizeof(host));
	snprintf(url, sizeof(url), "http://%s/settings/network#key=%s", host, tok);
	if (json) {
		json_t *o = json_pack("{s:s, s:s}", "url", url, "api", api);
		cli_print_json(o);
		json_decref(o);
	} else {
		printf("%s\n", url);
	}
	json_decref(st);
	return open ? open_url(url) : 0;
}
