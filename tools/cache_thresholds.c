/* SPDX-License-Identifier: MIT */
/*
 * cache_thresholds: how well does cache-semantic's built-in embedding
 * tell paraphrases from different questions?  Reads labelled question
 * pairs (tests/data/paraphrase_pairs.tsv), computes the cosine similarity
 * of each pair, sweeps the threshold from 0.00 to 1.00 in steps of 0.01
 * ("same question" when similarity >= threshold) and picks the defaults:
 *
 *   hit        the lowest threshold whose precision is >= --min-precision
 *              (0.95): a cached answer to a different question is worse
 *              than no answer, so precision comes first;
 *   near miss  below the hit threshold, the highest threshold whose F1 is
 *              within 0.01 of the best F1 there: such answers are shown
 *              labelled as an answer to a similar question, so recall may
 *              cost precision, but F1 is nearly flat over a wide range
 *              (the hard negatives are similar questions too) and a
 *              difference of 0.01 is a pair or two; of equally good
 *              thresholds the strictest shows the fewest unrelated answers.
 *
 * It also reports the "background": for each distinct question, the
 * highest similarity to any question it is not paired with.  A cache of
 * that many questions offers roughly that much similarity to a question it
 * has never seen, which is what a near-miss threshold must stay above.
 *
 * docs/cache-thresholds.md explains the results;
 * tools/cache_thresholds_ollama.py does the same with a model's embedding.
 */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "embed.h"

#ifndef SOVMESH_PAIRS_DEFAULT
#define SOVMESH_PAIRS_DEFAULT "tests/data/paraphrase_pairs.tsv"
#endif

#define STEPS 100 /* thresholds 0.00, 0.01, ... 1.00 */
#define F1_TOLERANCE 0.01

static const char usage[] =
    "usage: cache_thresholds [--json] [--scores] [--min-precision P] [FILE]\n"
    "Sweep cache-semantic's similarity thresholds for the built-in embedding\n"
    "over labelled question pairs (TSV: label, q1, q2 with a header line).\n"
    "  FILE                 default " SOVMESH_PAIRS_DEFAULT "\n"
    "  --json               machine-readable output\n"
    "  --scores             also list every pair's similarity, highest first\n"
    "  --min-precision P    precision the hit threshold needs (default 0.95)\n";

typedef struct pair {
	int label;
	float sim;
	char *q1, *q2;
} pair;

typedef struct row {
	int tp, fp, fn, tn;
	double precision, recall, f1; /* precision < 0: nothing predicted */
} row;

__attribute__((format(printf, 1, 2), noreturn)) static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("cache_thresholds: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(2);
}

static char *read_all(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		die("%s: cannot open: %s", path, strerror(errno));
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	size_t got;
	while (buf && (got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
		len += got;
		if (cap - len - 1 == 0) {
			char *nb = realloc(buf, cap *= 2);
			if (!nb)
				free(buf);
			buf = nb;
		}
	}
	if (!buf)
		die("out of memory");
	if (ferror(f))
		die("%s: read error: %s", path, strerror(errno));
	fclose(f);
	buf[len] = '\0';
	if (strlen(buf) != len)
		die("%s: contains a NUL byte", path);
	return buf;
}

/* Parses the TSV in place; exits with "FILE:LINE: why" on bad input. */
static pair *parse(const char *path, char *buf, size_t *np)
{
	size_t n = 0, cap = 64;
	pair *ps = malloc(cap * sizeof(*ps));
	long lineno = 0;
	char *line = buf;

	while (ps && *line) {
		char *end = strchr(line, '\n');
		char *next = end ? end + 1 : line + strlen(line);
		if (end)
			*end = '\0';
		else
			end = next;
		if (end > line && end[-1] == '\r')
			end[-1] = '\0';
		lineno++;

		if (lineno == 1) {
			if (strcmp(line, "label\tq1\tq2") != 0)
				die("%s:%ld: %s", path, lineno,
				    "the header must be \"label<TAB>q1<TAB>q2\"");
			line = next;
			continue;
		}
		if (*line == '\0') {
			line = next;
			continue;
		}
		char *t1 = strchr(line, '\t');
		char *t2 = t1 ? strchr(t1 + 1, '\t') : NULL;
		if (!t2 || strchr(t2 + 1, '\t'))
			die("%s:%ld: %s", path, lineno,
			    "expected 3 tab-separated fields: label, q1, q2");
		*t1 = *t2 = '\0';
		if (strcmp(line, "0") != 0 && strcmp(line, "1") != 0)
			die("%s:%ld: %s", path, lineno, "the label must be 0 or 1");
		if (!t1[1] || !t2[1])
			die("%s:%ld: %s", path, lineno, "empty question");
		if (n == cap) {
			pair *np2 = realloc(ps, (cap *= 2) * sizeof(*ps));
			if (!np2)
				free(ps);
			ps = np2;
			if (!ps)
				break;
		}
		ps[n++] = (pair){.label = line[0] - '0', .q1 = t1 + 1, .q2 = t2 + 1};
		line = next;
	}
	if (!ps)
		die("out of memory");
	if (lineno == 0)
		die("%s:1: empty file (expected the header \"label<TAB>q1<TAB>q2\")", path);
	*np = n;
	return ps;
}

static row count(const pair *ps, size_t n, int t)
{
	row r = {0};
	double thr = t / (double)STEPS;
	for (size_t i = 0; i < n; i++) {
		int pred = ps[i].sim >= thr;
		if (pred && ps[i].label)
			r.tp++;
		else if (pred)
			r.fp++;
		else if (ps[i].label)
			r.fn++;
		else
			r.tn++;
	}
	r.precision = r.tp + r.fp ? (double)r.tp / (r.tp + r.fp) : -1.0;
	r.recall = r.tp + r.fn ? (double)r.tp / (r.tp + r.fn) : 0.0;
	r.f1 = r.tp ? 2.0 * r.tp / (2.0 * r.tp + r.fp + r.fn) : 0.0;
	return r;
}

typedef struct background {
	size_t questions;
	float p50, p75, p90, max;
} background;

static int by_float(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return (x > y) - (x < y);
}

/* For each distinct question, the highest similarity to a question it is
 * never paired with; percentiles over the questions. */
static background background_of(const pair *ps, size_t n)
{
	const char **q = malloc(2 * n * sizeof(*q));
	size_t *qi = malloc(2 * n * sizeof(*qi)); /* pair k: qi[2k], qi[2k+1] */
	size_t nq = 0;
	if (!q || !qi)
		die("out of memory");
	for (size_t i = 0; i < 2 * n; i++) {
		const char *t = i % 2 ? ps[i / 2].q2 : ps[i / 2].q1;
		size_t j = 0;
		while (j < nq && strcmp(q[j], t) != 0)
			j++;
		if (j == nq)
			q[nq++] = t;
		qi[i] = j;
	}
	float (*v)[EMBED_BUILTIN_DIM] = malloc(nq * sizeof(*v));
	float *best = malloc(nq * sizeof(*best));
	unsigned char *partner = calloc(nq, 1);
	if (!v || !best || !partner)
		die("out of memory");
	for (size_t i = 0; i < nq; i++) {
		embed_builtin(q[i], strlen(q[i]), v[i]);
		best[i] = -1.0f;
	}
	for (size_t i = 0; i < nq; i++) {
		memset(partner, 0, nq);
		for (size_t k = 0; k < n; k++) {
			if (qi[2 * k] == i)
				partner[qi[2 * k + 1]] = 1;
			if (qi[2 * k + 1] == i)
				partner[qi[2 * k]] = 1;
		}
		for (size_t j = 0; j < nq; j++) {
			if (j == i || partner[j])
				continue;
			float s = embed_dot(v[i], v[j], EMBED_BUILTIN_DIM);
			if (s > best[i])
				best[i] = s;
		}
	}
	qsort(best, nq, sizeof(*best), by_float);
	background bg = {
	    .questions = nq,
	    .p50 = best[nq / 2],
	    .p75 = best[nq * 3 / 4],
	    .p90 = best[nq * 9 / 10],
	    .max = best[nq - 1],
	};
	free(partner);
	free(best);
	free(v);
	free(qi);
	free(q);
	return bg;
}

static int by_sim_desc(const void *a, const void *b)
{
	const pair *x = a, *y = b;
	return (x->sim < y->sim) - (x->sim > y->sim);
}

static void json_pick(const char *name, int t, const row *rows, const char *rule, int last)
{
	printf("  \"%s\": ", name);
	if (t < 0)
		printf("null");
	else
		printf("{\"threshold\": %.2f, \"precision\": %.4f, \"recall\": %.4f, "
		       "\"f1\": %.4f, \"rule\": \"%s\"}",
		       t / (double)STEPS, rows[t].precision, rows[t].recall, rows[t].f1, rule);
	printf("%s\n", last ? "" : ",");
}

static void human_pick(const char *name, int t, const row *rows, const char *rule)
{
	if (t < 0) {
		printf("%-21s none (%s)\n", name, rule);
		return;
	}
	printf("%-21s %.2f  precision %.3f, recall %.3f, F1 %.3f  (%s)\n", name,
	       t / (double)STEPS, rows[t].precision, rows[t].recall, rows[t].f1, rule);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"json", no_argument, NULL, 'j'},
	    {"scores", no_argument, NULL, 's'},
	    {"min-precision", required_argument, NULL, 'p'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	int json = 0, scores = 0, opt;
	double min_prec = 0.95;

	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (opt) {
		case 'j':
			json = 1;
			break;
		case 's':
			scores = 1;
			break;
		case 'p': {
			char *end;
			errno = 0;
			min_prec = strtod(optarg, &end);
			if (errno || end == optarg || *end || !(min_prec > 0.0 && min_prec <= 1.0))
				die("--min-precision must be a number in (0, 1], not \"%s\"", optarg);
			break;
		}
		case 'h':
			fputs(usage, stdout);
			return 0;
		default:
			fputs(usage, stderr);
			return 2;
		}
	}
	if (argc - optind > 1) {
		fputs(usage, stderr);
		return 2;
	}
	const char *path = optind < argc ? argv[optind] : SOVMESH_PAIRS_DEFAULT;

	char *buf = read_all(path);
	size_t n;
	pair *ps = parse(path, buf, &n);
	int npos = 0;
	for (size_t i = 0; i < n; i++)
		npos += ps[i].label;
	if (npos == 0 || (size_t)npos == n)
		die("%s: needs pairs labelled 1 and pairs labelled 0", path);

	static float a[EMBED_BUILTIN_DIM], b[EMBED_BUILTIN_DIM];
	for (size_t i = 0; i < n; i++) {
		embed_builtin(ps[i].q1, strlen(ps[i].q1), a);
		embed_builtin(ps[i].q2, strlen(ps[i].q2), b);
		ps[i].sim = embed_dot(a, b, EMBED_BUILTIN_DIM);
	}

	row rows[STEPS + 1];
	int hit = -1, near = -1;
	for (int t = 0; t <= STEPS; t++) {
		rows[t] = count(ps, n, t);
		if (hit < 0 && rows[t].precision >= min_prec)
			hit = t;
	}
	double best_f1 = -1.0;
	for (int t = 0; t < hit; t++)
		if (rows[t].f1 > best_f1)
			best_f1 = rows[t].f1;
	for (int t = 0; t < hit; t++)
		if (rows[t].f1 >= best_f1 - F1_TOLERANCE - 1e-12)
			near = t;
	background bg = background_of(ps, n);

	char hit_rule[64];
	snprintf(hit_rule, sizeof(hit_rule), "lowest threshold with precision >= %.2f", min_prec);
	char near_rule[96];
	snprintf(near_rule, sizeof(near_rule),
		 "highest below the hit threshold with F1 within %.2f of the best there",
		 F1_TOLERANCE);

	if (json) {
		printf("{\n  \"embedding\": \"builtin\",\n  \"dim\": %d,\n", EMBED_BUILTIN_DIM);
		printf("  \"pairs\": %zu,\n  \"positives\": %d,\n  \"negatives\": %zu,\n", n, npos,
		       n - (size_t)npos);
		printf("  \"min_precision\": %.4f,\n  \"sweep\": [\n", min_prec);
		for (int t = 0; t <= STEPS; t++) {
			const row *r = &rows[t];
			printf("    {\"threshold\": %.2f, \"tp\": %d, \"fp\": %d, \"fn\": %d, "
			       "\"tn\": %d, ",
			       t / (double)STEPS, r->tp, r->fp, r->fn, r->tn);
			if (r->precision < 0)
				printf("\"precision\": null, ");
			else
				printf("\"precision\": %.4f, ", r->precision);
			printf("\"recall\": %.4f, \"f1\": %.4f}%s\n", r->recall, r->f1,
			       t < STEPS ? "," : "");
		}
		printf("  ],\n");
		printf("  \"background\": {\"questions\": %zu, \"p50\": %.4f, \"p75\": %.4f, "
		       "\"p90\": %.4f, \"max\": %.4f},\n",
		       bg.questions, bg.p50, bg.p75, bg.p90, bg.max);
		json_pick("hit", hit, rows, hit_rule, 0);
		json_pick("near_miss", near, rows, near_rule, 1);
		printf("}\n");
	} else {
		printf("built-in embedding (dim %d): %zu pairs (%d paraphrases, %zu not) from %s\n\n",
		       EMBED_BUILTIN_DIM, n, npos, n - (size_t)npos, path);
		printf("threshold    tp    fp    fn    tn  precision  recall     F1\n");
		for (int t = 0; t <= STEPS; t++) {
			const row *r = &rows[t];
			printf("     %.2f  %4d  %4d  %4d  %4d", t / (double)STEPS, r->tp, r->fp,
			       r->fn, r->tn);
			if (r->precision < 0)
				printf("          -");
			else
				printf("  %9.3f", r->precision);
			printf("  %6.3f  %5.3f\n", r->recall, r->f1);
		}
		printf("\nbackground: each of the %zu questions' highest similarity to a question it\n"
		       "is not paired with: median %.2f, 75%% %.2f, 90%% %.2f, max %.2f\n\n",
		       bg.questions, bg.p50, bg.p75, bg.p90, bg.max);
		human_pick("hit threshold:", hit, rows, hit_rule);
		human_pick("near-miss threshold:", near, rows, near_rule);
		if (scores) {
			qsort(ps, n, sizeof(*ps), by_sim_desc);
			printf("\nsimilarity  label  q1 | q2\n");
			for (size_t i = 0; i < n; i++)
				printf("    %.4f      %d  %s | %s\n", ps[i].sim, ps[i].label,
				       ps[i].q1, ps[i].q2);
		}
	}
	free(ps);
	free(buf);
	if (hit < 0) {
		fprintf(stderr, "cache_thresholds: no threshold reaches precision %.2f on %s\n",
			min_prec, path);
		return 1;
	}
	return 0;
}
