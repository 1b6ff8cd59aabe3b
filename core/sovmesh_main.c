/*
 * sovmesh — the command-line client.  Daemon commands talk to sovmeshd
 * over its control socket; `fl aggregate` and `fl noise` run plugins
 * offline, without a daemon.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "build_config.h"
#include "cli.h"
#include "log.h"

static const char usage_text[] =
    "Usage: sovmesh [--json] [--socket PATH] [-c CONFIG] COMMAND [ARGS]\n"
    "\n"
    "Commands answered by the running daemon:\n"
    "  status                 the daemon's state\n"
    "  plugins                loaded plugins with their versions and settings\n"
    "  id                     this node's name and fingerprint\n"
    "  peers                  paired peers\n"
    "  peers remove PEER      revoke a peer (name, fingerprint or its prefix)\n"
    "  peers ping PEER        reach a paired peer over the mutual-TLS peer port\n"
    "  pair code [--qr] [--png FILE] [--no-wait]\n"
    "                         offer a one-time pairing code (and QR code)\n"
    "  pair join CODE [--addr HOST:PORT]\n"
    "                         pair with the device that shows CODE\n"
    "  pair uri URI           pair from a sovmesh://pair?... link\n"
    "  pair scan IMAGE        pair from a photo or screenshot of the QR code\n"
    "  ask [--model M] TEXT   ask the mesh (local backend, else a paired peer,\n"
    "                         else the answer cache, else a template answer)\n"
    "  cache stats|clear      the answer cache\n"
    "  network [--open]       the Settings -> Network page's address, with its key\n"
    "  feedback up|down --prompt TEXT --response TEXT [--model M]\n"
    "  feedback correct --prompt TEXT [--response TEXT] --correction TEXT\n"
    "                         rate an answer or correct it: a training sample\n"
    "                         (texts also from files: --prompt-file F, ...)\n"
    "  fl status              federated learning: samples, rounds, budget, adapter\n"
    "  fl rollback            back to the previous adapter\n"
    "  budget                 the privacy budget (ε) and its history\n"
    "  budget new-period [--total X] --yes\n"
    "                         start a new budget period (privacy loss adds up)\n"
    "\n"
    "Offline research tools (no daemon needed):\n"
    "  fl aggregate --method NAME [--param K=V ...] --out OUT IN[:WEIGHT] ...\n"
    "                         combine adapter files with an aggregator plugin\n"
    "  fl noise --mechanism NAME --epsilon E --clip C [--delta D]\n"
    "           [--param K=V ...] IN OUT\n"
    "                         clip and noise one adapter with a noise plugin\n"
    "\n"
    "Options:\n"
    "  --json                 machine-readable output\n"
    "  --socket PATH          the daemon's control socket (default: from the config)\n"
    "  -c, --config FILE      read the control socket path from this config\n"
    "  -h, --help             this text;  sovmesh COMMAND --help for a command\n"
    "  --version              print the version\n"
    "\n"
    "IN and OUT are .safetensors files or PEFT adapter directories.\n"
    "See docs/user-guide.md and docs/research-guide.md.\n";

static long long jint(json_t *o, const char *k)
{
	return (long long)json_integer_value(json_object_get(o, k));
}

/* The mesh inference part of `sovmesh status`. */
static void print_inference(json_t *inf)
{
	if (!inf)
		return;
	json_t *models = json_object_get(inf, "models");
	printf("backend:     %s, %lld/%lld slots busy, %zu model%s\n",
	       json_is_string(json_object_get(inf, "backend")) ? cli_str(inf, "backend") : "none",
	       jint(inf, "in_flight"), jint(inf, "slots"), json_array_size(models),
	       json_array_size(models) == 1 ? "" : "s");
	if (json_is_string(json_object_get(inf, "api")))
		printf("api:         http://%s/ (Ollama-compatible)\n", cli_str(inf, "api"));
	json_t *r = json_object_get(inf, "router");
	json_t *a = json_object_get(r, "answered");
	printf("answers:     %lld local, %lld peer, %lld cache, %lld template; %lld failed, "
	       "%lld fallbacks, %lld in flight\n",
	       jint(a, "local"), jint(a, "peer"), jint(a, "cache"), jint(a, "template"),
	       jint(r, "failed"), jint(r, "fallbacks"), jint(r, "in_flight"));
	json_t *ca = json_object_get(inf, "cache");
	if (json_is_object(ca))
		printf("cache:       %s, %lld entries; %lld hits, %lld near misses of %lld lookups\n",
		       json_is_true(json_object_get(ca, "enabled")) ? "on" : "off",
		       jint(json_object_get(ca, "plugin_stats"), "entries"), jint(ca, "hits"),
		       jint(ca, "near_misses"), jint(ca, "lookups"));
	json_t *s = json_object_get(inf, "serving");
	printf("serving:     %s, %lld/%lld peer requests open; %lld served, %lld refused busy, "
	       "%lld refused off, %lld failed\n",
	       json_is_true(json_object_get(s, "enabled")) ? "on" : "off", jint(s, "active"),
	       jint(s, "max_concurrent"), jint(s, "served"), jint(s, "refused_busy"),
	       jint(s, "refused_off"), jint(s, "failed"));
}

static int cmd_status(const cli *c)
{
	json_t *reply = NULL;
	if (cli_call(c, "GET", "/v1/status", NULL, 0, &reply))
		return 1;
	if (c->json) {
		cli_print_json(reply);
	} else {
		printf("sovmeshd %s, pid %lld, up %lld s\n", cli_str(reply, "version"),
		       (long long)json_integer_value(json_object_get(reply, "pid")),
		       (long long)json_integer_value(json_object_get(reply, "uptime_secs")));
		printf("node:        %s\n", cli_str(reply, "node_name"));
		printf("state dir:   %s\n", cli_str(reply, "state_dir"));
		printf("config:      %s\n", cli_str(reply, "config"));
		printf("log level:   %s\n", cli_str(reply, "log_level"));
		printf("mesh:        %s\n", json_is_true(json_object_get(reply, "mesh_enabled"))
		                                ? "enabled"
		                                : "disabled");
		printf("federated:   %s\n",
		       json_is_true(json_object_get(reply, "federated_learning_enabled"))
		           ? "enabled"
		           : "disabled");
		json_t *th = json_object_get(reply, "thermal");
		json_t *temp = json_object_get(th, "temp_c");
		if (json_is_number(temp))
			printf("thermal:     %.1f C%s\n", json_number_value(temp),
			       json_is_true(json_object_get(th, "hot")) ? " (hot: peers avoid it)"
			                                                : "");
		else
			printf("thermal:     no sensor%s\n",
			       json_is_true(json_object_get(th, "hot")) ? " (throttled)" : "");
		printf("plugins:     %zu loaded\n",
		       (size_t)json_integer_value(json_object_get(reply, "plugins_loaded")));
		print_inference(json_object_get(reply, "inference"));
	}
	json_decref(reply);
	return 0;
}

static int cmd_plugins(const cli *c)
{
	json_t *reply = NULL;
	if (cli_call(c, "GET", "/v1/plugins", NULL, 0, &reply))
		return 1;
	if (c->json) {
		cli_print_json(reply);
		json_decref(reply);
		return 0;
	}
	json_t *list = json_object_get(reply, "plugins");
	size_t i;
	json_t *p;
	printf("%-12s %-16s %-10s %-10s %s\n", "KIND", "NAME", "VERSION", "ABI", "FILE");
	json_array_foreach(list, i, p)
	{
		printf("%-12s %-16s %-10s %-10s %s\n", cli_str(p, "kind"), cli_str(p, "name"),
		       cli_str(p, "version"), cli_str(p, "abi"), cli_str(p, "file"));
		json_t *settings = json_object_get(p, "settings");
		size_t k;
		json_t *s;
		json_array_foreach(settings, k, s)
		{
			printf("    %s = %s    # %s\n", cli_str(s, "name"), cli_str(s, "value"),
			       cli_str(s, "help"));
		}
	}
	json_decref(reply);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"json", no_argument, NULL, 'j'},         {"socket", required_argument, NULL, 's'},
	    {"config", required_argument, NULL, 'c'}, {"help", no_argument, NULL, 'h'},
	    {"version", no_argument, NULL, 'V'},      {0},
	};
	cli c = {0};
	int opt;
	/* "+": stop at the command so its own options are left to it. */
	while ((opt = getopt_long(argc, argv, "+jc:h", opts, NULL)) != -1) {
		switch (opt) {
		case 'j':
			c.json = 1;
			break;
		case 's':
			c.socket_path = optarg;
			break;
		case 'c':
			c.config_path = optarg;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		case 'V':
			printf("sovmesh %s (plugin ABI %d.%d)\n", SOVMESH_VERSION,
			       SOVMESH_ABI_MAJOR, SOVMESH_ABI_MINOR);
			return 0;
		default:
			fputs(usage_text, stderr);
			return 2;
		}
	}
	if (optind >= argc) {
		fputs(usage_text, stderr);
		return 2;
	}
	/* Offline tools log warnings (e.g. deterministic noise) to stderr. */
	log_set_level(SOVMESH_LOG_WARNING);
	const char *cmd = argv[optind];
	int sub_argc = argc - optind;
	char **sub_argv = argv + optind;
	/* `sovmesh plugins --json` as well as `sovmesh --json plugins`. */
	for (int i = 1; i < sub_argc; i++)
		if (strcmp(sub_argv[i], "--json") == 0 &&
		    (strcmp(cmd, "status") == 0 || strcmp(cmd, "plugins") == 0 ||
		     strcmp(cmd, "id") == 0 || strcmp(cmd, "peers") == 0))
			c.json = 1;
	if (strcmp(cmd, "status") == 0)
		return cmd_status(&c);
	if (strcmp(cmd, "plugins") == 0)
		return cmd_plugins(&c);
	if (strcmp(cmd, "id") == 0)
		return cli_cmd_id(&c, sub_argc, sub_argv);
	if (strcmp(cmd, "peers") == 0)
		return cli_cmd_peers(&c, sub_argc, sub_argv);
	if (strcmp(cmd, "pair") == 0)
		return cli_cmd_pair(&c, sub_argc, sub_argv);
	if (strcmp(cmd, "fl") == 0)
		return cli_cmd_fl_route(&c, sub_argc, sub_argv);
	if (strcmp(cmd, "feedback") == 0)
		return cli_cmd_feedback(&c, sub_argc, sub_argv);
	if (strcmp(cmd, "budget") == 0)
		return cli_cmd_budget(&c, sub_argc, sub_argv);
	if (strcmp(cmd, "ask") == 0)
		return cli_cmd_ask(&c, sub_argc, sub_argv);
	if (strcmp(cmd, "cache") == 0)
		return cli_cmd_cache(&c, sub_argc, sub_argv);
	if (strcmp(cmd, "network") == 0)
		return cli_cmd_network(&c, sub_argc, sub_argv);
	if (strcmp(cmd, "help") == 0) {
		fputs(usage_text, stdout);
		return 0;
	}
	cli_fail("unknown command '%s'", cmd);
	fputs(usage_text, stderr);
	return 2;
}
