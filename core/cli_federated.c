/*
 * sovmesh feedback / fl status / fl rollback / budget: the daemon's
 * federated learning (core/fl_service.h has the endpoints).  The offline
 * tools `fl aggregate` and `fl noise` live in cli_fl.c; cli_cmd_fl_route
 * sends each `fl` subcommand to its file.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

static const char feedback_usage[] =
    "Usage: sovmesh feedback up|down --prompt TEXT --response TEXT [--model M]\n"
    "       sovmesh feedback correct --prompt TEXT [--response TEXT] --correction TEXT\n"
    "                        [--model M]\n"
    "\n"
    "Rate an answer (up: good, down: bad) or give the answer it should have\n"
    "been (correct).  The daemon stores it as a training sample on this device;\n"
    "after federated_learning.sync_after_n_samples samples a federated round\n"
    "trains on them.  The texts themselves never leave this device.\n"
    "\n"
    "  --prompt TEXT          the question that was asked\n"
    "  --response TEXT        the answer that was given (required for up/down)\n"
    "  --correction TEXT      the better answer (required for correct)\n"
    "  --prompt-file F, --response-file F, --correction-file F\n"
    "                         read that text from file F instead (\"-\": stdin),\n"
    "                         exactly as it is, for long texts\n"
    "  -m, --model M          the model that answered\n"
    "  --json                 print the daemon's reply {id, pending,\n"
    "                         sync_after_n_samples}\n"
    "\n"
    "Exit status: 0 stored, 1 refused by the daemon (or a file cannot be\n"
    "read, or the daemon is not running), 2 usage error.\n";

static const char fl_usage[] =
    "Usage: sovmesh fl status [--json]\n"
    "       sovmesh fl rollback [--json]\n"
    "       sovmesh fl aggregate ...   (offline; sovmesh fl aggregate --help)\n"
    "       sovmesh fl noise ...       (offline; sovmesh fl noise --help)\n"
    "\n"
    "  status     federated learning on this node: samples, rounds, privacy\n"
    "             budget, the current adapter and whether the backend uses it\n"
    "  rollback   go back to the previous adapter and apply it to the backend\n"
    "             again (e.g. after a round made the answers worse)\n"
    "  aggregate  combine adapter files with an aggregator plugin (no daemon)\n"
    "  noise      clip and noise one adapter with a noise plugin (no daemon)\n";

static const char budget_usage[] =
    "Usage: sovmesh budget [--json]\n"
    "       sovmesh budget new-period [--total X] --yes [--json]\n"
    "\n"
    "The privacy budget: every federated sync that sends a noisy delta to\n"
    "peers spends ε from it, recorded before anything is sent; when it is\n"
    "spent, rounds still train locally but nothing is sent.\n"
    "\n"
    "  (no subcommand)  spent, remaining and total ε of this period, and the\n"
    "                   history of charges, newest first\n"
    "  new-period       start a new period with a full budget of X ε (default\n"
    "                   and upper bound: federated_learning.privacy_budget).\n"
    "                   Privacy loss adds up across periods, so this needs --yes.\n";

static const char new_period_warning[] =
    "WARNING: a new privacy-budget period lets this device spend another full\n"
    "budget of ε on top of what its peers have already received.  Privacy loss\n"
    "adds up across periods: two periods of ε=10 are a total loss of ε=20, not\n"
    "10.  Start one only when you accept that, e.g. after a long time or for a\n"
    "different data set.\n"
    "Nothing was changed.  Run `sovmesh budget new-period --yes` to start it.\n";

/* A feedback text file larger than this is refused before it is sent (the
 * daemon's own limit per text is far lower; it says so itself). */
#define FEEDBACK_FILE_MAX (1024 * 1024)

#define BAR_WIDTH 20

static long long jint(json_t *o, const char *k)
{
	return (long long)json_integer_value(json_object_get(o, k));
}

static double jnum(json_t *o, const char *k)
{
	return json_number_value(json_object_get(o, k));
}

/* obj[key] (Unix seconds) as local time, or "never" when null or 0. */
static const char *fmt_time(json_t *obj, const char *key, char *buf, size_t len)
{
	json_int_t t = json_integer_value(json_object_get(obj, key));
	struct tm tm;
	time_t tt = (time_t)t;
	if (t <= 0 || !localtime_r(&tt, &tm) || !strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm))
		snprintf(buf, len, "never");
	return buf;
}

/* The "Usage:" lines of a help text, to stderr: the whole text would
 * bury the error line above it. */
static void print_synopsis(const char *usage)
{
	const char *end = strstr(usage, "\n\n");
	fprintf(stderr, "%.*s\n", end ? (int)(end - usage) : (int)strlen(usage), usage);
}

/* Print "error: ..." and the synopsis on stderr; returns 2 (the exit status). */
static int usage_error(const char *usage, const char *fmt, ...) SOVMESH_PRINTF(2, 3);
static int usage_error(const char *usage, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("error: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	print_synopsis(usage);
	return 2;
}

/* getopt_long (with opterr 0 and a ':' optstring) returned `opt` for
 * argv[optind - 1]; returns 2. */
static int option_error(const char *usage, const char *what, char **argv, int opt)
{
	const char *arg = optind > 0 ? argv[optind - 1] : "?";
	if (opt == ':')
		return usage_error(usage, "%s: %s needs a value", what, arg);
	return usage_error(usage, "%s: unknown option '%s' (see --help)", what, arg);
}

/* ---- feedback ---------------------------------------------------------------- */

/* One feedback text: given inline (--prompt) or from a file (--prompt-file). */
typedef struct fb_text {
	const char *name; /* "prompt", "response", "correction" */
	const char *inline_text;
	const char *file;
	char *data; /* read from file, or NULL */
	size_t len;
	int given;
} fb_text;

/* Read all of `path` ("-": stdin) into t->data; 0, or 1 after the error. */
static int read_text_file(fb_text *t)
{
	int use_stdin = strcmp(t->file, "-") == 0;
	FILE *f = use_stdin ? stdin : fopen(t->file, "rb");
	if (!f)
		return cli_fail("--%s-file %s: %s", t->name, t->file, strerror(errno));
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	int rc = 0;
	while (buf) {
		if (len == cap) {
			char *n = cap > FEEDBACK_FILE_MAX ? NULL : realloc(buf, cap * 2);
			if (!n) {
				rc = cap > FEEDBACK_FILE_MAX
				         ? cli_fail("--%s-file %s: larger than %d bytes", t->name,
				                    use_stdin ? "(stdin)" : t->file,
				                    FEEDBACK_FILE_MAX)
				         : cli_fail("out of memory");
				break;
			}
			buf = n;
			cap *= 2;
		}
		size_t got = fread(buf + len, 1, cap - len, f);
		len += got;
		if (got == 0) {
			if (ferror(f))
				rc = cli_fail("--%s-file %s: read error", t->name,
				              use_stdin ? "(stdin)" : t->file);
			break;
		}
	}
	if (!buf)
		rc = cli_fail("out of memory");
	if (!use_stdin)
		fclose(f);
	if (rc == 0 && len > FEEDBACK_FILE_MAX)
		rc = cli_fail("--%s-file %s: larger than %d bytes", t->name,
		              use_stdin ? "(stdin)" : t->file, FEEDBACK_FILE_MAX);
	if (rc == 0 && memchr(buf, '\0', len))
		rc = cli_fail("--%s-file %s: contains a NUL byte; the %s must be text", t->name,
		              use_stdin ? "(stdin)" : t->file, t->name);
	if (rc) {
		free(buf);
		return rc;
	}
	t->data = buf;
	t->len = len;
	return 0;
}

/* Set an option of a text once; 0, or 2 after a usage error. */
static int take_text(fb_text *t, int is_file, const char *arg)
{
	if (t->given) {
		return usage_error(
		    feedback_usage,
		    "feedback: give the %s once: --%s TEXT or --%s-file FILE, not both or twice",
		    t->name, t->name, t->name);
	}
	t->given = 1;
	if (is_file)
		t->file = arg;
	else
		t->inline_text = arg;
	return 0;
}

/* Add t to the body; 0, or 1 after the error. */
static int put_text(json_t *body, fb_text *t)
{
	if (!t->given)
		return 0;
	json_t *s = t->data ? json_stringn(t->data, t->len) : json_string(t->inline_text);
	if (!s)
		return cli_fail("feedback: the %s is not valid UTF-8 text", t->name);
	json_object_set_new(body, t->name, s);
	return 0;
}

static int text_empty(const fb_text *t)
{
	return t->data ? t->len == 0 : !t->inline_text[0];
}

static void print_feedback_reply(json_t *reply)
{
	long long pending = jint(reply, "pending"), every = jint(reply, "sync_after_n_samples");
	printf("feedback stored (sample %lld); ", jint(reply, "id"));
	if (every > 0 && pending < every)
		printf("%lld of %lld samples until the next federated round\n", every - pending,
		       every);
	else
		printf("%lld samples pending: a federated round starts now\n", pending);
}

int cli_cmd_feedback(const cli *c, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"prompt", required_argument, NULL, 'p'},
	    {"prompt-file", required_argument, NULL, 'P'},
	    {"response", required_argument, NULL, 'r'},
	    {"response-file", required_argument, NULL, 'R'},
	    {"correction", required_argument, NULL, 'c'},
	    {"correction-file", required_argument, NULL, 'C'},
	    {"model", required_argument, NULL, 'm'},
	    {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	if (argc < 2)
		return usage_error(feedback_usage, "feedback: say up, down or correct");
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		fputs(feedback_usage, stdout);
		return 0;
	}
	const char *verb = argv[1];
	const char *rating = NULL;
	if (strcmp(verb, "up") == 0 || strcmp(verb, "down") == 0)
		rating = verb;
	else if (strcmp(verb, "correct") != 0)
		return usage_error(feedback_usage,
		                   "feedback: unknown kind '%s' (up, down or correct)", verb);
	fb_text texts[3] = {{.name = "prompt"}, {.name = "response"}, {.name = "correction"}};
	fb_text *prompt = &texts[0], *response = &texts[1], *correction = &texts[2];
	const char *model = NULL;
	int json = c->json, opt, rc = 0;
	char what[32];
	snprintf(what, sizeof(what), "feedback %s", verb);
	/* 0: start over with these options (main parsed with "+"); the verb is
	 * argv[0] here.  Errors are ours, worded for this command. */
	optind = 0;
	opterr = 0;
	while (rc == 0 && (opt = getopt_long(argc - 1, argv + 1, ":m:h", opts, NULL)) != -1) {
		switch (opt) {
		case 'p':
		case 'P':
			rc = take_text(prompt, opt == 'P', optarg);
			break;
		case 'r':
		case 'R':
			rc = take_text(response, opt == 'R', optarg);
			break;
		case 'c':
		case 'C':
			rc = take_text(correction, opt == 'C', optarg);
			break;
		case 'm':
			model = optarg;
			break;
		case 'j':
			json = 1;
			break;
		case 'h':
			fputs(feedback_usage, stdout);
			return 0;
		default:
			return option_error(feedback_usage, what, argv + 1, opt);
		}
	}
	if (rc)
		return rc;
	if (optind < argc - 1)
		return usage_error(feedback_usage,
		                   "feedback: unexpected argument '%s' (quote texts with spaces)",
		                   argv[1 + optind]);
	if (!prompt->given)
		return usage_error(feedback_usage,
		                   "feedback %s: --prompt TEXT or --prompt-file FILE is required",
		                   verb);
	if (rating && !response->given)
		return usage_error(feedback_usage,
		                   "feedback %s: --response TEXT or --response-file FILE is "
		                   "required (the answer you rate)",
		                   verb);
	if (rating && correction->given)
		return usage_error(feedback_usage,
		                   "feedback %s: a correction goes with `sovmesh feedback "
		                   "correct`, not with a rating",
		                   verb);
	if (!rating && !correction->given)
		return usage_error(
		    feedback_usage,
		    "feedback %s: --correction TEXT or --correction-file FILE is required", verb);
	if (model && !model[0])
		return usage_error(feedback_usage, "feedback %s: --model is empty", verb);
	int stdin_users = 0;
	for (size_t i = 0; i < 3; i++)
		stdin_users += texts[i].file && strcmp(texts[i].file, "-") == 0;
	if (stdin_users > 1)
		return usage_error(feedback_usage,
		                   "feedback %s: only one text can come from stdin (\"-\")", verb);
	for (size_t i = 0; i < 3; i++)
		if (texts[i].file && (rc = read_text_file(&texts[i])) != 0)
			goto out;
	for (size_t i = 0; i < 3; i++) {
		if (texts[i].given && text_empty(&texts[i])) {
			rc = usage_error(feedback_usage, "feedback %s: the %s is empty", verb,
			                 texts[i].name);
			goto out;
		}
	}
	json_t *body = json_object();
	if (!body) {
		rc = cli_fail("out of memory");
		goto out;
	}
	json_object_set_new(body, "rating", rating ? json_string(rating) : json_null());
	if (model)
		json_object_set_new(body, "model", json_string(model));
	for (size_t i = 0; i < 3 && rc == 0; i++)
		rc = put_text(body, &texts[i]);
	if (model && !json_object_get(body, "model"))
		rc = cli_fail("feedback: the model name is not valid UTF-8");
	json_t *reply = NULL;
	if (rc == 0)
		rc = cli_call(c, "POST", "/v1/feedback", body, 0, &reply);
	json_decref(body);
	if (rc == 0) {
		if (json)
			cli_print_json(reply);
		else
			print_feedback_reply(reply);
	}
	json_decref(reply);
out:
	for (size_t i = 0; i < 3; i++)
		free(texts[i].data);
	return rc;
}

/* ---- fl status / fl rollback --------------------------------------------------- */

/* `--json` is the only option of these commands; 0, or 2 after an error. */
static int parse_json_only(const cli *c, const char *what, const char *usage, int argc, char **argv,
                           int *json)
{
	*json = c->json;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0) {
			*json = 1;
		} else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			fputs(usage, stdout);
			return -1;
		} else {
			return usage_error(usage, "%s: unexpected argument '%s'", what, argv[i]);
		}
	}
	return 0;
}

static void print_last_round(json_t *st)
{
	json_t *last = json_object_get(st, "last_round");
	printf("rounds:        %lld done", jint(st, "rounds_done"));
	if (json_is_object(last)) {
		char when[64];
		const char *state = cli_str(last, "state");
		json_t *fin = json_object_get(last, "finished");
		fmt_time(last, json_is_integer(fin) ? "finished" : "started", when, sizeof(when));
		printf("; last: #%lld%s%s at %s", jint(last, "id"),
		       strcmp(state, "done") == 0 ? "" : " ",
		       strcmp(state, "done") == 0 ? "" : state, when);
		const char *outcome = json_string_value(json_object_get(last, "outcome"));
		if (outcome)
			printf(", %s", outcome);
		/* A synced round's outcome names its ε already. */
		if (!outcome || !strstr(outcome, "ε="))
			printf(" (ε=%g spent)", jnum(last, "epsilon"));
	}
	if (json_is_true(json_object_get(st, "round_running")))
		printf("; a round is running");
	putchar('\n');
}

static void print_adapter(json_t *st)
{
	json_t *ad = json_object_get(st, "adapter"), *ap = json_object_get(st, "applied");
	const char *cur = json_string_value(json_object_get(ad, "current"));
	const char *prev = json_string_value(json_object_get(ad, "previous"));
	printf("adapter:       %s", cur ? cur : "none yet");
	if (prev)
		printf(" (previous %s)", prev);
	const char *state = cli_str(ap, "state");
	const char *applied = json_string_value(json_object_get(ap, "adapter"));
	char when[64];
	if (strcmp(state, "applied") == 0 && cur && applied && strcmp(cur, applied) == 0)
		printf("; applied as %s at %s\n", cli_str(ap, "model"),
		       fmt_time(ap, "time", when, sizeof(when)));
	else if (strcmp(state, "applied") == 0)
		printf("; the backend still uses %s as %s\n", applied ? applied : "-",
		       cli_str(ap, "model"));
	else if (strcmp(state, "pending") == 0)
		printf("; being applied to the backend%s%s\n",
		       json_is_string(json_object_get(ap, "model")) ? " as " : "",
		       json_is_string(json_object_get(ap, "model")) ? cli_str(ap, "model") : "");
	else if (strcmp(state, "failed") == 0)
		printf("; not applied: %s\n", cli_str(ap, "error"));
	else
		printf("; not applied to the backend\n");
}

static void print_status(json_t *st)
{
	if (!json_is_true(json_object_get(st, "enabled"))) {
		puts("federated learning: off (federated_learning.enabled = false)");
		return;
	}
	json_t *pl = json_object_get(st, "plugins");
	printf("federated learning: on (trainer %s, noise %s, aggregator %s)\n",
	       cli_str(pl, "trainer"), cli_str(pl, "noise"), cli_str(pl, "aggregator"));
	if (!json_is_true(json_object_get(st, "ready")))
		printf("not ready:     %s\n", cli_str(st, "not_ready_reason"));
	printf("samples:       %lld pending of %lld stored; a round runs every %lld\n",
	       jint(st, "samples_pending"), jint(st, "samples_total"),
	       jint(st, "sync_after_n_samples"));
	print_last_round(st);
	json_t *b = json_object_get(st, "budget");
	if (json_is_object(b))
		printf("privacy:       ε %g of %g spent, %g remaining (period %lld)\n",
		       jnum(b, "spent"), jnum(b, "total"), jnum(b, "remaining"), jint(b, "period"));
	else
		printf("privacy:       the ledger cannot be read (see the daemon's log)\n");
	print_adapter(st);
	json_t *d = json_object_get(st, "deltas");
	printf(
	    "deltas:        %lld sent, %lld received, %lld refused; %lld waiting for aggregation\n",
	    jint(d, "sent"), jint(d, "received"), jint(d, "refused"), jint(st, "inbox_pending"));
}

static int fl_status(const cli *c, int argc, char **argv)
{
	int json, rc = parse_json_only(c, "fl status", fl_usage, argc, argv, &json);
	if (rc)
		return rc < 0 ? 0 : rc;
	json_t *reply = NULL;
	if (cli_call(c, "GET", "/v1/fl/status", NULL, 0, &reply))
		return 1;
	if (json)
		cli_print_json(reply);
	else
		print_status(reply);
	json_decref(reply);
	return 0;
}

static int fl_rollback(const cli *c, int argc, char **argv)
{
	int json, rc = parse_json_only(c, "fl rollback", fl_usage, argc, argv, &json);
	if (rc)
		return rc < 0 ? 0 : rc;
	json_t *reply = NULL;
	if (cli_call(c, "POST", "/v1/fl/rollback", NULL, 0, &reply))
		return 1;
	if (json)
		cli_print_json(reply);
	else
		printf("rolled back from %s to %s; re-applying it to the backend\n",
		       cli_str(reply, "rolled_back"), cli_str(reply, "current"));
	json_decref(reply);
	return 0;
}

int cli_cmd_fl_route(const cli *c, int argc, char **argv)
{
	if (argc < 2) {
		fputs(fl_usage, stderr);
		return 2;
	}
	const char *sub = argv[1];
	if (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0) {
		fputs(fl_usage, stdout);
		return 0;
	}
	if (strcmp(sub, "status") == 0)
		return fl_status(c, argc - 1, argv + 1);
	if (strcmp(sub, "rollback") == 0)
		return fl_rollback(c, argc - 1, argv + 1);
	if (strcmp(sub, "aggregate") == 0 || strcmp(sub, "noise") == 0)
		return cli_cmd_fl(c, argc, argv);
	return usage_error(
	    fl_usage,
	    "unknown command 'fl %s' (try: fl status, fl rollback, fl aggregate, fl noise)", sub);
}

/* ---- budget ---------------------------------------------------------------------- */

static void print_bar(double spent, double total)
{
	char bar[BAR_WIDTH + 1];
	int filled = 0;
	if (total > 0 && spent > 0) {
		double f = spent / total * BAR_WIDTH;
		filled = f >= BAR_WIDTH ? BAR_WIDTH : (int)(f + 0.5);
		/* Any charge shows: a sliver of ε is not nothing. */
		if (filled == 0)
			filled = 1;
	}
	for (int i = 0; i < BAR_WIDTH; i++)
		bar[i] = i < filled ? '#' : '-';
	bar[BAR_WIDTH] = '\0';
	printf("[%s] %.1f of %.1f ε spent\n", bar, spent, total);
}

static void print_budget(json_t *b)
{
	char when[64];
	long long period = jint(b, "period");
	double spent = jnum(b, "spent"), total = jnum(b, "total");
	printf("privacy budget: period %lld, started %s\n", period,
	       fmt_time(b, "period_started", when, sizeof(when)));
	printf("spent:          ε %g in %lld charge%s", spent, jint(b, "charges"),
	       jint(b, "charges") == 1 ? "" : "s");
	if (jnum(b, "delta_spent") > 0)
		printf(" (δ %g)", jnum(b, "delta_spent"));
	putchar('\n');
	printf("remaining:      ε %g\n", jnum(b, "remaining"));
	printf("total:          ε %g\n", total);
	print_bar(spent, total);
	json_t *hist = json_object_get(b, "history");
	if (json_array_size(hist) == 0) {
		printf("history:        no ε spent yet (nothing has been sent to a peer)\n");
	} else {
		printf("history (newest first):\n");
		printf("  %-19s  %-6s  %-6s  %-8s  %-12s  %s\n", "TIME", "PERIOD", "ROUND", "ε",
		       "MECHANISM", "PEERS");
		size_t i;
		json_t *h;
		json_array_foreach(hist, i, h)
		{
			char round[24] = "-", eps[24];
			if (json_is_integer(json_object_get(h, "round")))
				snprintf(round, sizeof(round), "#%lld", jint(h, "round"));
			snprintf(eps, sizeof(eps), "%g", jnum(h, "epsilon"));
			/* "ε" is two bytes, one column: the header took one byte more. */
			printf("  %-19s  %-6lld  %-6s  %-7s  %-12s  %zu\n",
			       fmt_time(h, "time", when, sizeof(when)), jint(h, "period"), round,
			       eps, cli_str(h, "mechanism"),
			       json_array_size(json_object_get(h, "peers")));
		}
	}
	json_t *periods = json_object_get(b, "periods");
	size_t i, earlier = 0;
	json_t *p;
	json_array_foreach(periods, i, p)
	{
		if (jint(p, "period") == period)
			continue;
		if (earlier++ == 0)
			printf("earlier periods:\n");
		printf("  period %lld, started %s: ε %g of %g spent (%s)\n", jint(p, "period"),
		       fmt_time(p, "started", when, sizeof(when)), jnum(p, "spent"),
		       jnum(p, "total"),
		       json_is_string(json_object_get(p, "reason")) ? cli_str(p, "reason")
		                                                    : "no reason given");
	}
}

static int budget_new_period(const cli *c, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"total", required_argument, NULL, 't'},
	    {"yes", no_argument, NULL, 'y'},
	    {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	const char *total_text = NULL;
	int yes = 0, json = c->json, opt;
	optind = 0;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":t:yh", opts, NULL)) != -1) {
		switch (opt) {
		case 't':
			total_text = optarg;
			break;
		case 'y':
			yes = 1;
			break;
		case 'j':
			json = 1;
			break;
		case 'h':
			fputs(budget_usage, stdout);
			return 0;
		default:
			return option_error(budget_usage, "budget new-period", argv, opt);
		}
	}
	if (optind < argc)
		return usage_error(budget_usage, "budget new-period: unexpected argument '%s'",
		                   argv[optind]);
	double total = 0;
	if (total_text) {
		char *end = NULL;
		errno = 0;
		total = strtod(total_text, &end);
		if (!*total_text || *end || errno || !isfinite(total) || !(total > 0))
			return usage_error(budget_usage,
			                   "budget new-period: --total '%s' is not a number > 0",
			                   total_text);
	}
	if (!yes) {
		fputs(new_period_warning, stderr);
		return 2;
	}
	json_t *body = json_pack("{s:b}", "confirm", 1), *reply = NULL;
	if (!body)
		return cli_fail("out of memory");
	if (total_text)
		json_object_set_new(body, "total", json_real(total));
	int rc = cli_call(c, "POST", "/v1/budget/new-period", body, 0, &reply);
	json_decref(body);
	if (rc)
		return 1;
	if (json) {
		cli_print_json(reply);
	} else {
		printf("started privacy-budget period %lld with ε %g; earlier charges stay in the "
		       "history\n\n",
		       jint(reply, "period"), jnum(reply, "total"));
		print_budget(reply);
	}
	json_decref(reply);
	return 0;
}

int cli_cmd_budget(const cli *c, int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "new-period") == 0)
		return budget_new_period(c, argc - 1, argv + 1);
	int json, rc = parse_json_only(c, "budget", budget_usage, argc, argv, &json);
	if (rc)
		return rc < 0 ? 0 : rc;
	json_t *reply = NULL;
	if (cli_call(c, "GET", "/v1/budget", NULL, 0, &reply))
		return 1;
	if (json)
		cli_print_json(reply);
	else
		print_budget(reply);
	json_decref(reply);
	return 0;
}
