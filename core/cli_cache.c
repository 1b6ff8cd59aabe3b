/* sovmesh cache stats | clear: the answer cache of the fallback chain. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const char cache_usage[] =
    "Usage: sovmesh cache stats\n"
    "       sovmesh cache clear\n"
    "\n"
    "The cache answers a question when neither this device's model nor a\n"
    "paired peer can, from earlier answers to the same or a similar question.\n"
    "Cached questions and answers never leave this device.\n"
    "\n"
    "  stats   entries, hits, misses, evictions, storage used\n"
    "  clear   remove every cached answer\n";

static long long jint(json_t *o, const char *k)
{
	return (long long)json_integer_value(json_object_get(o, k));
}

int cli_cmd_cache(const cli *c, int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		fputs(cache_usage, argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	json_t *reply = NULL;
	int json = c->json || (argc > 2 && strcmp(argv[2], "--json") == 0);
	if (strcmp(argv[1], "stats") == 0) {
		if (cli_call(c, "GET", "/v1/cache", NULL, 0, &reply))
			return 1;
		if (json) {
			cli_print_json(reply);
		} else {
			json_t *ps = json_object_get(reply, "plugin_stats");
			printf("cache:       %s (embedding: %s)\n",
			       json_is_true(json_object_get(reply, "enabled")) ? "enabled" : "disabled",
			       cli_str(reply, "embedding"));
			if (json_is_object(ps))
				printf("entries:     %lld (%lld bytes); %lld evicted\n", jint(ps, "entries"),
				       jint(ps, "bytes"), jint(ps, "evictions"));
			printf("since start: %lld lookups, %lld hits, %lld near misses, %lld stored, "
			       "%lld errors\n",
			       jint(reply, "lookups"), jint(reply, "hits"), jint(reply, "near_misses"),
			       jint(reply, "stored"), jint(reply, "errors"));
		}
	} else if (strcmp(argv[1], "clear") == 0) {
		if (cli_call(c, "POST", "/v1/cache/clear", NULL, 0, &reply))
			return 1;
		if (json)
			cli_print_json(reply);
		else
			printf("removed %lld cached answer%s\n", jint(reply, "removed"),
			       jint(reply, "removed") == 1 ? "" : "s");
	} else {
		cli_fail("cache: unknown subcommand '%s'", argv[1]);
		fputs(cache_usage, stderr);
		return 2;
	}
	json_decref(reply);
	return 0;
}
