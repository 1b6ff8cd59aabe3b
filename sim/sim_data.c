/* sovmesh-sim's data: CSV loading, the split, the shards (see sim_data.h). */
#include "sim_data.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

/* ---- PRNG ---- */

uint64_t sim_rng_next(uint64_t *s)
{
	uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

/* The same mixing as bench/fl_dp_accuracy.c, so the simulator's default
 * run reproduces the bench's seed-1 numbers. */
uint64_t sim_rng_mix(uint64_t a, uint64_t b, uint64_t c)
{
	uint64_t s = a * UINT64_C(0x2545f4914f6cdd1d) ^ b;
	s = sim_rng_next(&s) ^ c;
	return sim_rng_next(&s);
}

double sim_rng_uniform(uint64_t *s)
{
	return (double)(sim_rng_next(s) >> 11) * 0x1p-53;
}

double sim_rng_normal(uint64_t *s)
{
	for (;;) {
		double u = 2 * sim_rng_uniform(s) - 1, v = 2 * sim_rng_uniform(s) - 1;
		double q = u * u + v * v;
		if (q > 0 && q < 1)
			return u * sqrt(-2 * log(q) / q);
	}
}

double sim_rng_log_gamma(uint64_t *s, double alpha)
{
	double boost = 0;
	if (alpha < 1) {
		/* Gamma(a) = Gamma(a + 1) * U^(1/a); U in (0, 1]. */
		boost = log(1 - sim_rng_uniform(s)) / alpha;
		alpha += 1;
	}
	double d = alpha - 1.0 / 3, c = 1 / sqrt(9 * d);
	for (;;) {
		double x = sim_rng_normal(s), v = 1 + c * x;
		if (v <= 0)
			continue;
		v = v * v * v;
		double u = sim_rng_uniform(s);
		if (u < 1 - 0.0331 * x * x * x * x ||
		    (u > 0 && log(u) < 0.5 * x * x + d * (1 - v + log(v))))
			return log(d * v) + boost;
	}
}

/* ---- CSV ---- */

/* A growable array of doubles. */
typedef struct dvec {
	double *v;
	size_t n, cap;
} dvec;

static int dvec_push(dvec *a, double x)
{
	if (a->n == a->cap) {
		size_t cap = a->cap ? 2 * a->cap : 4096;
		if (cap > SIZE_MAX / sizeof(double))
			return -ENOMEM;
		double *p = realloc(a->v, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		a->v = p;
		a->cap = cap;
	}
	a->v[a->n++] = x;
	return 0;
}

/* Read one line of any length into *buf (without the newline).  1 = a
 * line, 0 = end of file, -EIO = read error. */
static int read_line(gzFile f, char **buf, size_t *cap)
{
	size_t len = 0;
	if (!*buf) {
		*cap = 4096;
		*buf = malloc(*cap);
		if (!*buf)
			return -ENOMEM;
	}
	for (;;) {
		if (*cap - len < 2) {
			char *p = realloc(*buf, *cap * 2);
			if (!p)
				return -ENOMEM;
			*buf = p;
			*cap *= 2;
		}
		if (!gzgets(f, *buf + len,
		            (int)(*cap - len > INT32_MAX ? INT32_MAX : *cap - len))) {
			int zerr = Z_OK;
			gzerror(f, &zerr);
			if (zerr != Z_OK && zerr != Z_STREAM_END)
				return -EIO;
			(*buf)[len] = '\0';
			return len > 0;
		}
		len += strlen(*buf + len);
		if (len > 0 && (*buf)[len - 1] == '\n') {
			(*buf)[--len] = '\0';
			return 1;
		}
		if (gzeof(f))
			return 1;
	}
}

static char *trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	size_t n = strlen(s);
	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
		s[--n] = '\0';
	return s;
}

/* A finite number and nothing else.  0 or -EINVAL. */
static int parse_cell(const char *s, double *out)
{
	char *end = NULL;
	if (!*s)
		return -EINVAL;
	errno = 0;
	double v = strtod(s, &end);
	if (*end || errno == ERANGE || !isfinite(v))
		return -EINVAL;
	*out = v;
	return 0;
}

/* Cells of a line, split at commas in place; trimmed.  Returns the count. */
static size_t split_cells(char *line, char ***cells, size_t *cap, int *oom)
{
	size_t n = 0;
	char *p = line;
	*oom = 0;
	for (;;) {
		if (n == *cap) {
			size_t c = *cap ? 2 * *cap : 128;
			char **q = realloc(*cells, c * sizeof(*q));
			if (!q) {
				*oom = 1;
				return n;
			}
			*cells = q;
			*cap = c;
		}
		char *comma = strchr(p, ',');
		if (comma)
			*comma = '\0';
		(*cells)[n++] = trim(p);
		if (!comma)
			return n;
		p = comma + 1;
	}
}

static int is_blank(const char *s)
{
	for (; *s; s++)
		if (*s != ' ' && *s != '\t' && *s != '\r')
			return 0;
	return 1;
}

/* A cell quoted for a message: at most 40 characters, controls as '?'. */
static void quote_cell(const char *s, char *buf, size_t len)
{
	size_t i = 0;
	for (; s[i] && i + 4 < len && i < 40; i++)
		buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
	if (s[i] && i + 4 < len) {
		memcpy(buf + i, "...", 3);
		i += 3;
	}
	buf[i] = '\0';
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

void sim_data_free(sim_data *d)
{
	if (!d)
		return;
	free(d->path);
	free(d->x);
	free(d->y);
	free(d->label_of);
	memset(d, 0, sizeof(*d));
}

int sim_data_load(const char *path, unsigned label_column, double scale, sim_data *out,
                  sovmesh_error *err)
{
	memset(out, 0, sizeof(*out));
	if (!(scale >= 0) || !isfinite(scale))
		return sovmesh_fail(err, -EINVAL, "--scale must be a number > 0");
	errno = 0;
	gzFile f = gzopen(path, "rb");
	if (!f)
		return sovmesh_fail(err, errno ? -errno : -ENOMEM, "cannot open %s: %s", path,
		                    errno ? strerror(errno) : "out of memory");

	dvec feat = {0}, lab = {0};
	char *line = NULL, **cells = NULL;
	size_t line_cap = 0, cells_cap = 0, cols = 0, lineno = 0, header_cols = 0;
	int r = 0, seen_row = 0;
	int64_t *labels = NULL;
	char q[64];

	for (;;) {
		r = read_line(f, &line, &line_cap);
		if (r == 0)
			break;
		if (r < 0) {
			r = r == -ENOMEM ? sovmesh_fail(err, r, "out of memory")
			                 : sovmesh_fail(err, r,
			                                "%s: read error after line %zu "
			                                "(a damaged gzip file?)",
			                                path, lineno);
			goto done;
		}
		r = 0;
		lineno++;
		if (is_blank(line))
			continue;
		int oom;
		size_t n = split_cells(line, &cells, &cells_cap, &oom);
		if (oom) {
			r = sovmesh_fail(err, -ENOMEM, "out of memory");
			goto done;
		}
		if (!seen_row && !header_cols) {
			/* The first row: a header when any cell is not a number. */
			double v;
			for (size_t j = 0; j < n; j++)
				if (parse_cell(cells[j], &v) < 0)
					header_cols = n;
			if (header_cols) {
				out->had_header = 1;
				continue;
			}
		}
		if (!seen_row) {
			cols = n;
			if (cols < 2) {
				r = sovmesh_fail(
				    err, -EINVAL,
				    "%s:%zu: one column only; a row needs at least one "
				    "feature and a label",
				    path, lineno);
				goto done;
			}
			if (header_cols && header_cols != cols) {
				r = sovmesh_fail(err, -EINVAL,
				                 "%s:%zu: %zu columns, but the header has %zu",
				                 path, lineno, cols, header_cols);
				goto done;
			}
			if (label_column > cols) {
				r = sovmesh_fail(err, -EINVAL,
				                 "--label-column %u: %s has only %zu columns",
				                 label_column, path, cols);
				goto done;
			}
			seen_row = 1;
		}
		if (n != cols) {
			r = sovmesh_fail(err, -EINVAL,
			                 "%s:%zu: %zu columns, expected %zu as on the "
			                 "first row",
			                 path, lineno, n, cols);
			goto done;
		}
		size_t lc = label_column ? label_column - 1 : cols - 1;
		for (size_t j = 0; j < n; j++) {
			double v;
			if (parse_cell(cells[j], &v) < 0) {
				quote_cell(cells[j], q, sizeof(q));
				r = sovmesh_fail(err, -EINVAL,
				                 *cells[j]
				                     ? "%s:%zu: column %zu: '%s' is not a number"
				                     : "%s:%zu: column %zu is empty%s",
				                 path, lineno, j + 1, q);
				goto done;
			}
			if (j == lc) {
				if (v != floor(v) || fabs(v) > 2147483647.0) {
					quote_cell(cells[j], q, sizeof(q));
					r = sovmesh_fail(
					    err, -EINVAL,
					    "%s:%zu: column %zu (the label): '%s' is not "
					    "an integer",
					    path, lineno, j + 1, q);
					goto done;
				}
				r = dvec_push(&lab, v);
			} else {
				r = dvec_push(&feat, v);
			}
			if (r < 0) {
				r = sovmesh_fail(err, r, "out of memory");
				goto done;
			}
		}
	}
	if (!seen_row) {
		r = sovmesh_fail(err, -EINVAL, "%s: no data rows", path);
		goto done;
	}

	out->n = lab.n;
	out->d = cols - 1;
	/* Classes: the sorted distinct labels. */
	labels = malloc(out->n * sizeof(*labels));
	out->y = malloc(out->n * sizeof(*out->y));
	out->x = malloc(feat.n * sizeof(*out->x));
	out->path = strdup(path);
	if (!labels || !out->y || !out->x || !out->path) {
		r = sovmesh_fail(err, -ENOMEM, "out of memory");
		goto done;
	}
	for (size_t i = 0; i < out->n; i++)
		labels[i] = (int64_t)lab.v[i];
	qsort(labels, out->n, sizeof(*labels), cmp_i64);
	size_t classes = 0;
	for (size_t i = 0; i < out->n; i++)
		if (i == 0 || labels[i] != labels[i - 1])
			labels[classes++] = labels[i];
	if (classes < 2) {
		r = sovmesh_fail(err, -EINVAL,
		                 "%s: every row has the label %lld; a classifier "
		                 "needs at least 2 classes",
		                 path, (long long)labels[0]);
		goto done;
	}
	out->classes = (uint32_t)classes;
	out->label_of = labels;
	labels = NULL;
	for (size_t i = 0; i < out->n; i++) {
		int64_t v = (int64_t)lab.v[i];
		const int64_t *at = bsearch(&v, out->label_of, classes, sizeof(v), cmp_i64);
		out->y[i] = (int32_t)(at - out->label_of);
	}

	if (scale == 0) {
		for (size_t i = 0; i < feat.n; i++)
			scale = fmax(scale, fabs(feat.v[i]));
		if (scale == 0)
			scale = 1;
	}
	out->scale = scale;
	for (size_t i = 0; i < feat.n; i++) {
		double v = feat.v[i] / scale;
		if (!isfinite((float)v)) {
			r = sovmesh_fail(err, -EINVAL,
			                 "%s: feature %zu of row %zu is too large for "
			                 "a float after dividing by %g (--scale)",
			                 path, i % out->d + 1, i / out->d + 1, scale);
			goto done;
		}
		out->x[i] = (float)v;
	}
	r = 0;
done:
	gzclose(f);
	free(line);
	free(cells);
	free(feat.v);
	free(lab.v);
	free(labels);
	if (r < 0)
		sim_data_free(out);
	return r;
}

/* ---- split ---- */

int sim_split_parse(const char *text, sim_split_kind *out, sovmesh_error *err)
{
	memset(out, 0, sizeof(*out));
	if (strcmp(text, "iid") == 0)
		return 0;
	if (strncmp(text, "dirichlet:", 10) == 0) {
		char *end = NULL;
		errno = 0;
		double a = strtod(text + 10, &end);
		if (text[10] && !*end && !errno && isfinite(a) && a > 0) {
			out->dirichlet = 1;
			out->alpha = a;
			return 0;
		}
		return sovmesh_fail(err, -EINVAL,
		                    "--split %s: ALPHA must be a number > 0 (e.g. dirichlet:0.5)",
		                    text);
	}
	return sovmesh_fail(err, -EINVAL, "--split %s: expected iid or dirichlet:ALPHA", text);
}

void sim_split_free(sim_split *s)
{
	if (!s)
		return;
	free(s->test);
	free(s->train);
	free(s->off);
	memset(s, 0, sizeof(*s));
}

static sovmesh_sample sample_of(const sim_data *d, size_t row)
{
	return (sovmesh_sample){
	    .size = sizeof(sovmesh_sample),
	    .rating = SOVMESH_RATING_NONE,
	    .features = d->x + row * d->d,
	    .n_features = d->d,
	    .label = d->y[row],
	};
}

/* client_of[i] for the training rows order[0..n_train): Dirichlet shares
 * per class. */
static int dirichlet_assign(const sim_data *d, const size_t *order, size_t n_train,
                            uint32_t clients, double alpha, uint64_t seed, uint32_t *client_of)
{
	size_t *rows = malloc(n_train * sizeof(*rows));
	double *lg = malloc(clients * sizeof(*lg));
	if (!rows || !lg) {
		free(rows);
		free(lg);
		return -ENOMEM;
	}
	uint64_t s = sim_rng_mix(seed, 0xd1c41e7, 0);
	for (uint32_t c = 0; c < d->classes; c++) {
		size_t nc = 0;
		for (size_t i = 0; i < n_train; i++)
			if (d->y[order[i]] == (int32_t)c)
				rows[nc++] = i;
		/* p ~ Dir(alpha): normalised Gamma(alpha) draws, in logs. */
		double top = -INFINITY, sum = 0;
		for (uint32_t k = 0; k < clients; k++) {
			lg[k] = sim_rng_log_gamma(&s, alpha);
			top = fmax(top, lg[k]);
		}
		for (uint32_t k = 0; k < clients; k++)
			sum += exp(lg[k] - top);
		double cum = 0;
		size_t from = 0;
		for (uint32_t k = 0; k < clients; k++) {
			cum += exp(lg[k] - top) / sum;
			size_t to = k + 1 == clients ? nc : (size_t)llround((double)nc * cum);
			if (to > nc)
				to = nc;
			for (size_t j = from; j < to; j++)
				client_of[rows[j]] = k;
			if (to > from)
				from = to;
		}
	}
	free(rows);
	free(lg);
	return 0;
}

int sim_split_make(const sim_data *d, double test_fraction, uint32_t clients,
                   const sim_split_kind *kind, uint64_t seed, sim_split *out, sovmesh_error *err)
{
	memset(out, 0, sizeof(*out));
	if (!(test_fraction > 0 && test_fraction < 1))
		return sovmesh_fail(err, -EINVAL, "--test-fraction must be between 0 and 1");
	if (clients < 1)
		return sovmesh_fail(err, -EINVAL, "--clients must be at least 1");
	size_t n_train = (size_t)floor((double)d->n * (1 - test_fraction));
	if (n_train >= d->n)
		n_train = d->n - 1;
	if (n_train == 0 || n_train == d->n)
		return sovmesh_fail(err, -EINVAL,
		                    "%s: %zu rows cannot be split into a train and a test part "
		                    "with --test-fraction %g",
		                    d->path, d->n, test_fraction);
	if (n_train < clients)
		return sovmesh_fail(err, -EINVAL,
		                    "%s: %zu training rows for %u clients; every client needs at "
		                    "least one (fewer --clients or a smaller --test-fraction)",
		                    d->path, n_train, clients);

	size_t *order = malloc(d->n * sizeof(*order));
	uint32_t *client_of = malloc(n_train * sizeof(*client_of));
	out->test = calloc(d->n - n_train, sizeof(*out->test));
	out->train = calloc(n_train, sizeof(*out->train));
	out->off = calloc((size_t)clients + 1, sizeof(*out->off));
	int r = 0;
	if (!order || !client_of || !out->test || !out->train || !out->off) {
		r = sovmesh_fail(err, -ENOMEM, "out of memory");
		goto done;
	}
	/* Fisher-Yates, as bench/fl_dp_accuracy.c shuffles. */
	uint64_t s = sim_rng_mix(seed, 0x5eed, 0);
	for (size_t i = 0; i < d->n; i++)
		order[i] = i;
	for (size_t i = d->n - 1; i > 0; i--) {
		size_t j = (size_t)(sim_rng_next(&s) % (i + 1));
		size_t t = order[i];
		order[i] = order[j];
		order[j] = t;
	}
	out->n_train = n_train;
	out->n_test = d->n - n_train;
	out->clients = clients;
	for (size_t i = 0; i < out->n_test; i++)
		out->test[i] = sample_of(d, order[n_train + i]);

	if (kind && kind->dirichlet) {
		r = dirichlet_assign(d, order, n_train, clients, kind->alpha, seed, client_of);
		if (r < 0) {
			r = sovmesh_fail(err, r, "out of memory");
			goto done;
		}
	} else {
		for (uint32_t k = 0; k < clients; k++)
			for (size_t i = n_train * k / clients; i < n_train * (k + 1) / clients; i++)
				client_of[i] = k;
	}
	/* Counting sort by client, keeping the shuffled order inside a shard. */
	for (size_t i = 0; i < n_train; i++)
		out->off[client_of[i] + 1]++;
	for (uint32_t k = 0; k < clients; k++)
		out->off[k + 1] += out->off[k];
	size_t *fill = calloc(clients, sizeof(*fill));
	if (!fill) {
		r = sovmesh_fail(err, -ENOMEM, "out of memory");
		goto done;
	}
	for (size_t i = 0; i < n_train; i++) {
		uint32_t k = client_of[i];
		out->train[out->off[k] + fill[k]++] = sample_of(d, order[i]);
	}
	free(fill);
	for (uint32_t k = 0; k < clients; k++)
		if (out->off[k + 1] == out->off[k])
			out->empty++;
done:
	free(order);
	free(client_of);
	if (r < 0)
		sim_split_free(out);
	return r;
}
