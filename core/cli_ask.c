/* sovmesh ask: one question through the daemon's fallback chain. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char ask_usage[] =
    "Usage: sovmesh ask [--model MODEL] TEXT...\n"
    "\n"
    "Ask the mesh: the local backend answers unless it is busy or hot, else\n"
    "the fastest paired peer that has the model (only TEXT and the model name\n"
    "leave this device, sealed to that peer).  Prints the answer, and on\n"
    "stderr where it came from.  Words after the options are joined by spaces.\n"
    "\n"
    "  -m, --model MODEL   the model (default: inference.default_model, else\n"
    "                      the first model the local backend or a peer lists)\n"
    "  --json              print {answer, model, source, peer, elapsed_ms}\n";

/* Longer than any hop's request_timeout_secs default, so the daemon, not
 * the client, decides when a request has failed. */
#define ASK_TIMEOUT_MS (15L * 60L * 1000L)

int cli_cmd_ask(const cli *c, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"model", required_argument, NULL, 'm'},
	    {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	const char *model = NULL;
	int json = c->json, opt;
	optind = 1;
	while ((opt = getopt_long(argc, argv, "+m:h", opts, NULL)) != -1) {
		switch (opt) {
		case 'm':
			model = optarg;
			break;
		case 'j':
			json = 1;
			break;
		case 'h':
			fputs(ask_usage, stdout);
			return 0;
		default:
			fputs(ask_usage, stderr);
			return 2;
		}
	}
	if (optind >= argc) {
		cli_fail("ask: no question given");
		fputs(ask_usage, stderr);
		return 2;
	}
	size_t len = 1;
	for (int i = optind; i < argc; i++)
		len += strlen(argv[i]) + 1;
	char *text = calloc(1, len);
	if (!text)
		return cli_fail("out of memory");
	for (int i = optind; i < argc; i++) {
		if (i > optind)
			strcat(text, " ");
		strcat(text, argv[i]);
	}
	json_t *body = json_pack("{s:s}", "text", text);
	free(text);
	if (!body)
		return cli_fail("ask: the question is not valid UTF-8");
	if (model)
		json_object_set_new(body, "model", json_string(model));
	json_t *reply = NULL;
	int rc = cli_call(c, "POST", "/v1/ask", body, ASK_TIMEOUT_MS, &reply);
	json_decref(body);
	if (rc)
		return rc;
	if (json) {
		cli_print_json(reply);
	} else {
		const char *answer = cli_str(reply, "answer");
		fputs(answer, stdout);
		if (!*answer || answer[strlen(answer) - 1] != '\n')
			fputc('\n', stdout);
		const char *peer = json_string_value(json_object_get(reply, "peer"));
		fprintf(stderr, "(%s, model %s, %lld ms%s%s%s)\n", cli_str(reply, "source"),
		        cli_str(reply, "model"),
		        (long long)json_integer_value(json_object_get(reply, "elapsed_ms")),
		        peer ? ", peer '" : "", peer ? peer : "", peer ? "'" : "");
	}
	json_decref(reply);
	return 0;
}
