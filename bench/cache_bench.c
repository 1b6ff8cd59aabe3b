/*
 * cache_bench: lookup latency of cache-semantic's vector index
 * (plugins/cache-semantic/index.c) against a naive brute-force scan.
 *
 *   meson setup build-rel -Dbuildtype=release -Dbench=true
 *   meson compile -C build-rel && build-rel/bench/cache_bench [N...]
 *
 * For each N (default 10000 and 100000) it fills the index with N random
 * unit vectors of 768 dimensions, one model, then times lookups one by
 * one, each method in a block of 200 after 20 warm-up lookups, for two
 * kinds of query: near one stored vector (cosine ~0.9) with
 * min_similarity 0.80, and random with min 1e-9 (every entry qualifies,
 * so the best of all must be found: the most rescoring), with
 *
 *   index           the int8 scan plus float32 rescoring of the candidates
 *   exact f32 scan  the same index code, float32 rows only (no int8 stage)
 *   naive           entries as separate heap allocations; per entry a
 *                   strcmp of the model and a cosine computing both norms
 *                   in double
 *
 * and checks that the index answers what the naive scan answers.  Prints
 * a table of median, p99 and mean in milliseconds.  Not a test.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "index.h"

#define DIM     768
#define LOOKUPS 200
#define WARMUP  20

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

static float uni(uint64_t *s) /* [-1, 1) */
{
	return (float)((double)(splitmix(s) >> 11) * 0x1p-52 - 1.0);
}

/* Entry k's vector, the same every time it is asked for. */
static void entry_vec(uint64_t k, float *v)
{
	uint64_t s = k * UINT64_C(0x2545f4914f6cdd1d) + 1;
	for (int i = 0; i < DIM; i++)
		v[i] = uni(&s);
	vindex_normalize(v, DIM);
}

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- the naive baseline ---- */

typedef struct naive_entry {
	int64_t id;
	char *model;
	float *vec;
} naive_entry;

static int naive_search(naive_entry **e, size_t n, const char *model, const float *q,
                        double min_sim, int64_t *id, double *sim)
{
	double best = -INFINITY;
	int64_t best_id = -1;
	for (size_t k = 0; k < n; k++) {
		if (strcmp(e[k]->model, model) != 0)
			continue;
		double dot = 0, na = 0, nb = 0;
		for (int i = 0; i < DIM; i++) {
			dot += (double)e[k]->vec[i] * q[i];
			na += (double)e[k]->vec[i] * e[k]->vec[i];
			nb += (double)q[i] * q[i];
		}
		double c = na > 0 && nb > 0 ? dot / (sqrt(na) * sqrt(nb)) : 0;
		if (c > best) {
			best = c;
			best_id = e[k]->id;
		}
	}
	if (best_id < 0 || best < min_sim)
		return 0;
	*id = best_id;
	*sim = best;
	return 1;
}

/* ---- timing ---- */

typedef struct series {
	double t[LOOKUPS];
} series;

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static void row(const char *name, series *s)
{
	double mean = 0;
	for (int i = 0; i < LOOKUPS; i++)
		mean += s->t[i] / LOOKUPS;
	qsort(s->t, LOOKUPS, sizeof(double), cmp_double);
	printf("  %-34s %9.3f %9.3f %9.3f\n", name, s->t[LOOKUPS / 2],
	       s->t[(LOOKUPS * 99 + 99) / 100 - 1], mean);
}

/* Query i: near stored entry (i * 7919) % n, or random. */
static void query_vec(int i, int near, size_t n, float *q)
{
	if (!near) {
		uint64_t s = UINT64_C(0xabcdef) + (uint64_t)i * 31;
		for (int d = 0; d < DIM; d++)
			q[d] = uni(&s);
		return;
	}
	entry_vec(((uint64_t)i * 7919) % n, q);
	uint64_t s = UINT64_C(0x12345) + (uint64_t)i;
	for (int d = 0; d < DIM; d++)
		q[d] += 0.03f * uni(&s); /* |noise| ~ 0.48: cosine ~ 0.9 */
}

static int run(size_t n)
{
	float v[DIM], q[DIM];
	vindex *fast = vindex_new(DIM, 0), *exact = vindex_new(DIM, 1);
	naive_entry **ne = calloc(n, sizeof(*ne));
	if (!fast || !exact || !ne)
		return -1;

	double t0 = now_ms();
	for (size_t k = 0; k < n; k++) {
		entry_vec(k, v);
		vindex_item it = {.id = (int64_t)k, .model = "llama3", .builtin = v};
		if (vindex_add(fast, &it, NULL) < 0)
			return -1;
	}
	double fill = now_ms() - t0;
	for (size_t k = 0; k < n; k++) {
		entry_vec(k, v);
		vindex_item it = {.id = (int64_t)k, .model = "llama3", .builtin = v};
		ne[k] = malloc(sizeof(**ne));
		if (!ne[k] || vindex_add(exact, &it, NULL) < 0)
			return -1;
		ne[k]->id = (int64_t)k;
		ne[k]->model = strdup("llama3");
		ne[k]->vec = malloc(DIM * sizeof(float));
		if (!ne[k]->model || !ne[k]->vec)
			return -1;
		memcpy(ne[k]->vec, v, sizeof(v));
	}

	printf("\n%zu entries x %d dims (index filled in %.0f ms, %.1f MB of vectors)\n", n, DIM,
	       fill, (double)n * DIM * 5 / 1e6);
	printf("  %-34s %9s %9s %9s   (ms per lookup)\n", "", "median", "p99", "mean");

	static const struct {
		const char *name;
		int near;
		double min;
	} kinds[] = {{"query near a stored entry, min 0.80", 1, 0.80},
	             {"random query, min 1e-9 (best of all)", 0, 1e-9}};
	for (size_t k = 0; k < 2; k++) {
		series s_fast, s_exact, s_naive;
		int agree = 0, hits = 0;
		/* Each method in a block of its own (its data warm in the caches
		 * as far as they hold it), then the answers are compared. */
		vindex_hit a[LOOKUPS], b[LOOKUPS];
		int ra[LOOKUPS], rb[LOOKUPS], rn[LOOKUPS];
		int64_t nid[LOOKUPS];
		double nsim[LOOKUPS];
		for (int m = 0; m < 3; m++) {
			for (int i = -WARMUP; i < LOOKUPS; i++) {
				query_vec(i < 0 ? LOOKUPS - i : i, kinds[k].near, n, q);
				vindex_hit h;
				int64_t id = -1;
				double sim = 0;
				float mn = (float)kinds[k].min;
				double t1 = now_ms(), t2;
				int r;
				if (m == 0)
					r = vindex_search(fast, "llama3", q, 0, mn, &h);
				else if (m == 1)
					r = vindex_search(exact, "llama3", q, 0, mn, &h);
				else
					r = naive_search(ne, n, "llama3", q, kinds[k].min, &id,
					                 &sim);
				t2 = now_ms();
				if (i < 0)
					continue;
				(m == 0 ? &s_fast : m == 1 ? &s_exact : &s_naive)->t[i] = t2 - t1;
				if (m == 0) {
					ra[i] = r;
					a[i] = h;
				} else if (m == 1) {
					rb[i] = r;
					b[i] = h;
				} else {
					rn[i] = r;
					nid[i] = id;
					nsim[i] = sim;
				}
			}
		}
		for (int i = 0; i < LOOKUPS; i++) {
			hits += ra[i] == 1;
			agree += ra[i] == rn[i] && rb[i] == rn[i] &&
			         (rn[i] == 0 || (a[i].id == nid[i] && b[i].id == nid[i] &&
			                         fabs(a[i].similarity - nsim[i]) < 1e-4));
		}
		char name[80];
		printf(" %s (%d/%d found, %d/%d agree with naive):\n", kinds[k].name, hits, LOOKUPS,
		       agree, LOOKUPS);
		snprintf(name, sizeof(name), "index (int8 scan + f32 rescoring)");
		row(name, &s_fast);
		row("index, exact f32 scan only", &s_exact);
		row("naive (heap entries, double norms)", &s_naive);
		if (agree != LOOKUPS) {
			fprintf(stderr, "cache_bench: the index disagrees with the naive scan\n");
			return -1;
		}
	}
	for (size_t k = 0; k < n; k++) {
		free(ne[k]->model);
		free(ne[k]->vec);
		free(ne[k]);
	}
	free(ne);
	vindex_free(fast);
	vindex_free(exact);
	return 0;
}

int main(int argc, char **argv)
{
	char cpu[512] = "unknown";
	FILE *f = fopen("/proc/cpuinfo", "r");
	char line[512];
	while (f && fgets(line, sizeof(line), f))
		if (strncmp(line, "model name", 10) == 0) {
			char *p = strchr(line, ':');
			snprintf(cpu, sizeof(cpu), "%s", p ? p + 2 : line);
			cpu[strcspn(cpu, "\n")] = '\0';
			break;
		}
	if (f)
		fclose(f);
	int avx2 = 0;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
	__builtin_cpu_init();
	avx2 = __builtin_cpu_supports("avx2");
#endif
	printf("cache_bench: CPU %s; AVX2 %s; one thread\n", cpu, avx2 ? "yes" : "no");

	size_t sizes[8] = {10000, 100000};
	int nsizes = 2;
	if (argc > 1) {
		nsizes = 0;
		for (int i = 1; i < argc && nsizes < 8; i++) {
			char *end;
			unsigned long long v = strtoull(argv[i], &end, 10);
			if (*end || v == 0 || v > 10000000) {
				fprintf(stderr,
				        "cache_bench: '%s' is not an entry count (1..10000000)\n",
				        argv[i]);
				return 2;
			}
			sizes[nsizes++] = (size_t)v;
		}
	}
	for (int i = 0; i < nsizes; i++)
		if (run(sizes[i]) < 0) {
			fprintf(stderr, "cache_bench: failed at %zu entries\n", sizes[i]);
			return 1;
		}
	return 0;
}
