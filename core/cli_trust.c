/* sovmesh id / peers / pair: identity, trusted peers and pairing. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "qr.h"
#include "qr_scan.h"

static const char pair_usage[] =
    "Usage: sovmesh pair code [--qr] [--png FILE] [--no-wait]\n"
    "       sovmesh pair join CODE [--addr HOST:PORT]\n"
    "       sovmesh pair uri URI\n"
    "       sovmesh pair scan IMAGE\n"
    "\n"
    "Pairing makes two devices trust each other; nothing is trusted before.\n"
    "On the first device run `sovmesh pair code`: it shows a one-time code\n"
    "(and with --qr a QR code of a sovmesh://pair link) and waits.  On the\n"
    "second device type the code with `pair join`, open the link with\n"
    "`pair uri`, or decode a photo of the QR code with `pair scan`.  Both\n"
    "devices then print the other's name and short fingerprint: compare them.\n"
    "\n"
    "  --qr         draw the QR code in the terminal\n"
    "  --png FILE   also write the QR code as a PNG image\n"
    "  --no-wait    print the code and return instead of waiting\n"
    "  --addr       the first device's pairing address (shown by `pair code`);\n"
    "               without it the device is found through discovery (mDNS)\n";

/* Pairing (key exchange with SRP) can take a few seconds on a Pi. */
#define PAIR_TIMEOUT_MS 60000

int cli_cmd_id(const cli *c, int argc, char **argv)
{
	(void)argc;
	(void)argv;
	json_t *reply = NULL;
	if (cli_call(c, "GET", "/v1/id", NULL, 0, &reply))
		return 1;
	if (c->json) {
		cli_print_json(reply);
	} else {
		printf("name:         %s\n", cli_str(reply, "name"));
		printf("fingerprint:  %s\n", cli_str(reply, "fingerprint"));
		printf("short form:   %s\n", cli_str(reply, "short_fingerprint"));
		printf("peer port:    %lld\n",
		       (long long)json_integer_value(json_object_get(reply, "peer_port")));
	}
	json_decref(reply);
	return 0;
}

static void format_time(json_t *obj, const char *key, char *buf, size_t len)
{
	json_int_t t = json_integer_value(json_object_get(obj, key));
	if (t <= 0) {
		snprintf(buf, len, "never");
		return;
	}
	time_t tt = (time_t)t;
	struct tm tm;
	localtime_r(&tt, &tm);
	strftime(buf, len, "%Y-%m-%d %H:%M", &tm);
}

static int peers_remove(const cli *c, const char *what)
{
	json_t *body = json_pack("{s:s}", "peer", what), *reply = NULL;
	int rc = cli_call(c, "POST", "/v1/peers/remove", body, 0, &reply);
	json_decref(body);
	if (rc)
		return 1;
	json_t *p = json_object_get(reply, "removed");
	if (c->json)
		cli_print_json(reply);
	else
		printf("Removed %s (%s): it is no longer trusted; open connections were closed.\n",
		       cli_str(p, "name"), cli_str(p, "short_fingerprint"));
	json_decref(reply);
	return 0;
}

/* Reach a paired peer over the mutual-TLS peer port and time it. */
static int peers_ping(const cli *c, const char *what)
{
	json_t *body = json_pack("{s:s}", "peer", what), *reply = NULL;
	int rc = cli_call(c, "POST", "/v1/peers/ping", body, 30000, &reply);
	json_decref(body);
	if (rc)
		return 1;
	if (c->json)
		cli_print_json(reply);
	else
		printf("%s (%s) at %s answered over mutual TLS in %.1f ms\n",
		       cli_str(reply, "name"), cli_str(reply, "short_fingerprint"),
		       cli_str(reply, "address"),
		       json_number_value(json_object_get(reply, "rtt_ms")));
	json_decref(reply);
	return 0;
}

int cli_cmd_peers(const cli *c, int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "ping") == 0) {
		if (argc != 3)
			return cli_fail("usage: sovmesh peers ping PEER");
		return peers_ping(c, argv[2]);
	}
	if (argc >= 2 && strcmp(argv[1], "remove") == 0) {
		if (argc != 3)
			return cli_fail("usage: sovmesh peers remove PEER (a name, fingerprint, "
			                "fingerprint prefix or short form)");
		return peers_remove(c, argv[2]);
	}
	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], "--json") != 0)
			return cli_fail("unknown argument '%s' (try: sovmesh peers [--json], "
			                "sovmesh peers remove PEER)",
			                argv[i]);
	json_t *reply = NULL;
	if (cli_call(c, "GET", "/v1/peers", NULL, 0, &reply))
		return 1;
	if (c->json) {
		cli_print_json(reply);
		json_decref(reply);
		return 0;
	}
	json_t *list = json_object_get(reply, "peers");
	if (json_array_size(list) == 0) {
		puts("No paired peers yet.  Pair one with `sovmesh pair code` on this device\n"
		     "and `sovmesh pair join CODE --addr ...` on the other.");
		json_decref(reply);
		return 0;
	}
	printf("%-18s %-22s %-14s %-24s %-9s %s\n", "NAME", "ADDRESS", "STATUS", "MODELS",
	       "LATENCY", "LAST SYNC");
	size_t i;
	json_t *p;
	json_array_foreach(list, i, p)
	{
		char synced[32], latency[16] = "-", models[64] = "";
		format_time(p, "last_sync", synced, sizeof(synced));
		json_t *lat = json_object_get(p, "latency_ms");
		if (json_is_number(lat))
			snprintf(latency, sizeof(latency), "%.1f ms", json_number_value(lat));
		size_t k;
		json_t *m;
		json_array_foreach(json_object_get(p, "models"), k, m)
		{
			size_t used = strlen(models);
			snprintf(models + used, sizeof(models) - used, "%s%s", k ? "," : "",
			         json_string_value(m));
		}
		const char *addr = json_string_value(json_object_get(p, "address"));
		if (!addr) {
			json_t *addrs = json_object_get(p, "addresses");
			addr = json_string_value(json_array_get(addrs, 0));
		}
		int up = strcmp(cli_str(p, "status"), "connected") == 0;
		/* The emoji take two columns but count as four bytes: pad by hand. */
		printf("%-18s %-22s %s %-11s %-24s %-9s %s\n", cli_str(p, "name"),
		       addr ? addr : "-", up ? "\xf0\x9f\x9f\xa2" : "\xf0\x9f\x94\xb4",
		       up ? "Connected" : "Offline", models[0] ? models : "-", latency, synced);
	}
	json_t *disc = json_object_get(reply, "discovered");
	if (json_array_size(disc) > 0) {
		printf("\nDiscovered on the network, not paired:\n");
		json_array_foreach(disc, i, p)
		{
			printf("  %-18s %-22s %s\n",
			       json_is_string(json_object_get(p, "name")) ? cli_str(p, "name")
			                                                  : "(unnamed)",
			       cli_str(p, "address"),
			       json_is_true(json_object_get(p, "pairing_open"))
			           ? "pairing code offered"
			           : "");
		}
	}
	json_decref(reply);
	return 0;
}

static void print_paired(const cli *c, json_t *reply)
{
	json_t *p = json_object_get(reply, "peer");
	if (c->json)
		cli_print_json(reply);
	else
		printf("Paired with %s (%s).\nCompare this with what the other device shows; "
		       "both devices now trust each other.\n",
		       cli_str(p, "name"), cli_str(p, "short_fingerprint"));
}

static int pair_join(const cli *c, json_t *body)
{
	json_t *reply = NULL;
	int rc = cli_call(c, "POST", "/v1/pair/join", body, PAIR_TIMEOUT_MS, &reply);
	if (rc)
		return 1;
	print_paired(c, reply);
	json_decref(reply);
	return 0;
}

/* Poll the daemon until the offer is used, expires or is burned. */
static int pair_wait(const cli *c)
{
	for (;;) {
		json_t *st = NULL;
		if (cli_call(c, "GET", "/v1/pair/status", NULL, 0, &st))
			return 1;
		const char *state = cli_str(st, "state");
		if (strcmp(state, "paired") == 0) {
			print_paired(c, st);
			json_decref(st);
			return 0;
		}
		if (strcmp(state, "waiting") != 0) {
			int rc = cli_fail("pairing code %s: %s", state,
			                  json_is_string(json_object_get(st, "reason"))
			                      ? cli_str(st, "reason")
			                      : "no longer valid");
			json_decref(st);
			return rc;
		}
		json_decref(st);
		usleep(300 * 1000);
	}
}

static int pair_code(const cli *c, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"qr", no_argument, NULL, 'q'},
	    {"png", required_argument, NULL, 'p'},
	    {"no-wait", no_argument, NULL, 'n'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	int qr = 0, wait = 1, opt;
	const char *png = NULL;
	optind = 1;
	while ((opt = getopt_long(argc, argv, "qp:nh", opts, NULL)) != -1) {
		switch (opt) {
		case 'q':
			qr = 1;
			break;
		case 'p':
			png = optarg;
			break;
		case 'n':
			wait = 0;
			break;
		case 'h':
			fputs(pair_usage, stdout);
			return 0;
		default:
			fputs(pair_usage, stderr);
			return 2;
		}
	}
	if (optind < argc)
		return cli_fail("pair code: unexpected argument '%s'", argv[optind]);
	json_t *reply = NULL;
	json_t *body = json_object();
	int rc = cli_call(c, "POST", "/v1/pair/code", body, 0, &reply);
	json_decref(body);
	if (rc)
		return 1;
	const char *uri = cli_str(reply, "uri");
	sovmesh_error err = {0};
	if (png && qr_render_png(uri, png, 8, &err) < 0) {
		json_decref(reply);
		return cli_fail("%s", err.message);
	}
	if (c->json) {
		cli_print_json(reply);
	} else {
		json_t *addrs = json_object_get(reply, "addresses");
		printf("Pairing code: %s\n", cli_str(reply, "code"));
		printf("Valid for %lld seconds, once.  On the other device run:\n",
		       (long long)json_integer_value(json_object_get(reply, "expires_in_secs")));
		size_t i;
		json_t *a;
		json_array_foreach(addrs, i, a)
		{
			printf("    sovmesh pair join %s --addr %s\n", cli_str(reply, "code"),
			       json_string_value(a));
		}
		printf("or open this link there:\n    %s\n", uri);
		if (qr) {
			char *text = NULL;
			if (qr_render_text(uri, &text, &err) < 0) {
				json_decref(reply);
				return cli_fail("%s", err.message);
			}
			fputs(text, stdout);
			free(text);
		}
		if (png)
			printf("QR code written to %s\n", png);
		if (wait)
			printf("Waiting for the other device (Ctrl-C stops waiting; the code stays "
			       "valid)...\n");
		fflush(stdout);
	}
	json_decref(reply);
	return wait ? pair_wait(c) : 0;
}

int cli_cmd_pair(const cli *c, int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		fputs(pair_usage, argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	const char *sub = argv[1];
	if (strcmp(sub, "code") == 0)
		return pair_code(c, argc - 1, argv + 1);
	if (strcmp(sub, "join") == 0) {
		const char *code = NULL, *addr = NULL;
		for (int i = 2; i < argc; i++) {
			if (strcmp(argv[i], "--addr") == 0 && i + 1 < argc)
				addr = argv[++i];
			else if (strncmp(argv[i], "--addr=", 7) == 0)
				addr = argv[i] + 7;
			else if (!code && argv[i][0] != '-')
				code = argv[i];
			else
				return cli_fail("pair join: unexpected argument '%s'", argv[i]);
		}
		if (!code)
			return cli_fail("pair join: give the code shown on the other device");
		/* Without --addr the daemon finds the issuer through discovery. */
		json_t *body = addr ? json_pack("{s:s, s:s}", "code", code, "addr", addr)
		                    : json_pack("{s:s}", "code", code);
		int rc = pair_join(c, body);
		json_decref(body);
		return rc;
	}
	if (strcmp(sub, "uri") == 0) {
		if (argc != 3)
			return cli_fail("usage: sovmesh pair uri 'sovmesh://pair?...'");
		json_t *body = json_pack("{s:s}", "uri", argv[2]);
		int rc = pair_join(c, body);
		json_decref(body);
		return rc;
	}
	if (strcmp(sub, "scan") == 0) {
		if (argc != 3)
			return cli_fail(
			    "usage: sovmesh pair scan IMAGE (a PNG or JPEG of the QR code)");
		char *text = NULL;
		sovmesh_error err = {0};
		/* Decoded here: the image is on this machine, not the daemon's. */
		if (qr_scan_file(argv[2], &text, &err) < 0)
			return cli_fail("%s", err.message);
		json_t *body = json_pack("{s:s}", "uri", text);
		free(text);
		int rc = pair_join(c, body);
		json_decref(body);
		return rc;
	}
	return cli_fail("unknown command 'pair %s' (try: pair code, pair join, pair uri, pair "
	                "scan)",
	                sub);
}
