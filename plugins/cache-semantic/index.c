/* SPDX-License-Identifier: MIT */
/*
 * cache-semantic's vector index (see index.h).
 *
 * Search is two-stage.  Every row r of float32 vector a is also kept as
 * int8 codes c (|c_i| <= 127) with a scale s, â = s c.  For a query q
 * (normalised, quantised the same way: q̂), the int8 scan gives â·q̂ and
 *
 *   |a·q - â·q̂| <= |(a-â)·q| + |â·(q-q̂)| <= ||a-â|| ||q|| + ||â|| ||q-q̂||
 *
 * (Cauchy-Schwarz), with ||a-â|| and ||â|| stored per row.  So every row
 * has an interval [lo, hi] holding its exact score.  The exact best row
 * has hi >= its score >= every row's lo, so rescoring in float32 only the
 * rows with hi >= max(max lo, threshold) finds it — usually a handful.
 */
#include "index.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define VINDEX_X86 1
#include <immintrin.h>
#endif

/* Slack on the bound for float rounding in the approximate and the
 * rescored dot products (typically ~1e-6 at 768 dims).  Were it ever
 * short, a row within it of the best could be returned instead: harmless. */
#define BOUND_SLACK 1e-4f

typedef void (*scan_fn)(const int8_t *m, size_t n, size_t stride, const int8_t *q, int32_t *out);
typedef float (*dot_fn)(const float *a, const float *b, size_t n);

typedef struct vmat {
	size_t dim;     /* floats per vector */
	size_t fstride; /* floats per float32 row: dim rounded up to 8 */
	size_t qstride; /* bytes per int8 row: dim rounded up to 32 */
	size_t n, cap;
	float *f;        /* cap x fstride, zero-padded */
	int8_t *q;       /* cap x qstride, zero-padded */
	float *scale;    /* per row: â = scale * q */
	float *qerr;     /* per row: ||a - â|| */
	float *qnorm;    /* per row: ||â|| */
	uint32_t *owner; /* per row: the entry's handle */
} vmat;

typedef struct shard {
	char *model;
	vmat b;  /* built-in embeddings: one row per entry of the model */
	vmat *g; /* model embeddings: one matrix per dimension */
	size_t ng;
} shard;

typedef struct entry {
	int64_t id, created, last_used;
	uint32_t shard; /* VINDEX_NONE: a free slot (lru_next links free slots) */
	uint32_t brow;  /* row in the shard's built-in matrix */
	uint32_t group; /* index into shard.g, or VINDEX_NONE */
	uint32_t grow;
	uint32_t lru_prev, lru_next; /* towards less / more recently used */
	uint32_t age_prev, age_next; /* towards older / newer created */
} entry;

struct vindex {
	size_t bdim;
	int exact;
	int bulk;
	scan_fn scan;
	dot_fn dot;

	entry *e;
	size_t elen, ecap, count;
	uint32_t efree;
	uint32_t lru_first, lru_last; /* least / most recently used */
	uint32_t age_first, age_last; /* oldest / newest created */

	uint32_t *map; /* id -> handle, open addressing; VINDEX_NONE = empty */
	size_t mapcap; /* a power of two, or 0 */

	shard *s;
	size_t ns;

	int32_t *dots; /* scan scratch, as long as the largest matrix */
	size_t dotscap;
};

/* ---- dot products ------------------------------------------------------ */

static void scan_i8_plain(const int8_t *m, size_t n, size_t stride, const int8_t *q, int32_t *out)
{
	for (size_t r = 0; r < n; r++) {
		const int8_t *a = m + r * stride;
		int32_t s = 0;
		for (size_t i = 0; i < stride; i++)
			s += (int32_t)a[i] * q[i];
		out[r] = s;
	}
}

/* stride is a multiple of 8: eight independent sums the compiler can
 * keep in one vector register. */
static float dot_f32_plain(const float *a, const float *b, size_t n)
{
	float s[8] = {0};
	for (size_t i = 0; i < n; i += 8)
		for (size_t k = 0; k < 8; k++)
			s[k] += a[i + k] * b[i + k];
	return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

#ifdef VINDEX_X86
/*
 * 32 int8 products per step: maddubs multiplies unsigned by signed bytes,
 * so the sign of a moves onto q (sign_epi8) and |a| <= 127 goes in as
 * unsigned.  Pairs sum to at most 2 * 127 * 127 < 32767: no saturation.
 */
__attribute__((target("avx2"))) static void scan_i8_avx2(const int8_t *m, size_t n, size_t stride,
                                                         const int8_t *q, int32_t *out)
{
	const __m256i ones = _mm256_set1_epi16(1);
	for (size_t r = 0; r < n; r++) {
		const int8_t *a = m + r * stride;
		__m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
		size_t i = 0;
		for (; i + 64 <= stride; i += 64) {
			__m256i x0 = _mm256_loadu_si256((const __m256i *)(a + i));
			__m256i y0 = _mm256_loadu_si256((const __m256i *)(q + i));
			__m256i x1 = _mm256_loadu_si256((const __m256i *)(a + i + 32));
			__m256i y1 = _mm256_loadu_si256((const __m256i *)(q + i + 32));
			__m256i p0 = _mm256_maddubs_epi16(_mm256_sign_epi8(x0, x0),
			                                  _mm256_sign_epi8(y0, x0));
			__m256i p1 = _mm256_maddubs_epi16(_mm256_sign_epi8(x1, x1),
			                                  _mm256_sign_epi8(y1, x1));
			acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(p0, ones));
			acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(p1, ones));
		}
		for (; i < stride; i += 32) {
			__m256i x0 = _mm256_loadu_si256((const __m256i *)(a + i));
			__m256i y0 = _mm256_loadu_si256((const __m256i *)(q + i));
			__m256i p0 = _mm256_maddubs_epi16(_mm256_sign_epi8(x0, x0),
			                                  _mm256_sign_epi8(y0, x0));
			acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(p0, ones));
		}
		__m256i acc = _mm256_add_epi32(acc0, acc1);
		__m128i s =
		    _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
		s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
		s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
		out[r] = _mm_cvtsi128_si32(s);
	}
}

__attribute__((target("avx2,fma"))) static float dot_f32_avx2(const float *a, const float *b,
                                                              size_t n)
{
	__m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
	__m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
	size_t i = 0;
	for (; i + 32 <= n; i += 32) {
		s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
		s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
		s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
		s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
	}
	for (; i < n; i += 8)
		s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
	__m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
	__m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
	h = _mm_add_ps(h, _mm_movehl_ps(h, h));
	h = _mm_add_ss(h, _mm_movehdup_ps(h));
	return _mm_cvtss_f32(h);
}
#endif

double vindex_normalize(float *v, size_t n)
{
	double ss = 0;
	for (size_t i = 0; i < n; i++)
		ss += (double)v[i] * v[i];
	double norm = sqrt(ss);
	if (norm > 0 && isfinite(norm)) {
		double inv = 1.0 / norm;
		for (size_t i = 0; i < n; i++)
			v[i] = (float)(v[i] * inv);
	}
	return norm;
}

/* int8 codes of f (dim floats) into c (qstride bytes, zero-padded). */
static void quantise(const float *f, size_t dim, size_t qstride, int8_t *c, float *scale,
                     float *qerr, float *qnorm)
{
	float mx = 0;
	for (size_t i = 0; i < dim; i++)
		if (fabsf(f[i]) > mx)
			mx = fabsf(f[i]);
	memset(c, 0, qstride);
	*scale = *qerr = *qnorm = 0;
	if (!(mx > 0))
		return;
	float s = mx / 127.0f, inv = 127.0f / mx;
	double e2 = 0, n2 = 0;
	for (size_t i = 0; i < dim; i++) {
		long v = lrintf(f[i] * inv);
		v = v > 127 ? 127 : v < -127 ? -127 : v;
		c[i] = (int8_t)v;
		double approx = (double)s * (double)v;
		double d = (double)f[i] - approx;
		e2 += d * d;
		n2 += approx * approx;
	}
	*scale = s;
	*qerr = (float)sqrt(e2);
	*qnorm = (float)sqrt(n2);
}

/* ---- matrices ---------------------------------------------------------- */

static void vmat_init(vmat *m, size_t dim)
{
	memset(m, 0, sizeof(*m));
	m->dim = dim;
	m->fstride = (dim + 7) & ~(size_t)7;
	m->qstride = (dim + 31) & ~(size_t)31;
}

static void vmat_free(vmat *m)
{
	free(m->f);
	free(m->q);
	free(m->scale);
	free(m->qerr);
	free(m->qnorm);
	free(m->owner);
	memset(m, 0, sizeof(*m));
}

static int grow_array(void **p, size_t n, size_t size)
{
	void *np = realloc(*p, n * size);
	if (!np)
		return -ENOMEM;
	*p = np;
	return 0;
}

/* Room for one more row (and a scan scratch that long).  An array that
 * grew before a later one failed just stays larger. */
static int vmat_reserve(vindex *ix, vmat *m)
{
	if (m->n < m->cap)
		return 0;
	size_t cap = m->cap ? m->cap * 2 : 16;
	if (grow_array((void **)&m->f, cap, m->fstride * sizeof(float)) < 0 ||
	    grow_array((void **)&m->q, cap, m->qstride) < 0 ||
	    grow_array((void **)&m->scale, cap, sizeof(float)) < 0 ||
	    grow_array((void **)&m->qerr, cap, sizeof(float)) < 0 ||
	    grow_array((void **)&m->qnorm, cap, sizeof(float)) < 0 ||
	    grow_array((void **)&m->owner, cap, sizeof(uint32_t)) < 0)
		return -ENOMEM;
	if (ix->dotscap < cap) {
		if (grow_array((void **)&ix->dots, cap, sizeof(int32_t)) < 0)
			return -ENOMEM;
		ix->dotscap = cap;
	}
	m->cap = cap;
	return 0;
}

static uint32_t vmat_push(vmat *m, const float *v, uint32_t owner)
{
	size_t r = m->n++;
	float *f = m->f + r * m->fstride;
	memcpy(f, v, m->dim * sizeof(float));
	memset(f + m->dim, 0, (m->fstride - m->dim) * sizeof(float));
	quantise(f, m->dim, m->qstride, m->q + r * m->qstride, &m->scale[r], &m->qerr[r],
	         &m->qnorm[r]);
	m->owner[r] = owner;
	return (uint32_t)r;
}

/* Remove row r by moving the last row into it; returns the handle of the
 * entry that moved to r, or VINDEX_NONE. */
static uint32_t vmat_remove(vmat *m, size_t r)
{
	size_t last = --m->n;
	if (r == last)
		return VINDEX_NONE;
	memcpy(m->f + r * m->fstride, m->f + last * m->fstride, m->fstride * sizeof(float));
	memcpy(m->q + r * m->qstride, m->q + last * m->qstride, m->qstride);
	m->scale[r] = m->scale[last];
	m->qerr[r] = m->qerr[last];
	m->qnorm[r] = m->qnorm[last];
	m->owner[r] = m->owner[last];
	return m->owner[r];
}

/* ---- shards ------------------------------------------------------------ */

static shard *find_shard(const vindex *ix, const char *model, uint32_t *idx)
{
	for (size_t i = 0; i < ix->ns; i++)
		if (strcmp(ix->s[i].model, model) == 0) {
			if (idx)
				*idx = (uint32_t)i;
			return &ix->s[i];
		}
	return NULL;
}

static vmat *find_group(const shard *s, size_t dim, uint32_t *idx)
{
	for (size_t i = 0; i < s->ng; i++)
		if (s->g[i].dim == dim) {
			if (idx)
				*idx = (uint32_t)i;
			return &s->g[i];
		}
	return NULL;
}

static shard *get_shard(vindex *ix, const char *model)
{
	shard *s = find_shard(ix, model, NULL);
	if (s)
		return s;
	char *name = strdup(model);
	shard *ns = name ? realloc(ix->s, (ix->ns + 1) * sizeof(*ix->s)) : NULL;
	if (!ns) {
		free(name);
		return NULL;
	}
	ix->s = ns;
	s = &ix->s[ix->ns++];
	memset(s, 0, sizeof(*s));
	s->model = name;
	vmat_init(&s->b, ix->bdim);
	return s;
}

static vmat *get_group(shard *s, size_t dim)
{
	vmat *g = find_group(s, dim, NULL);
	if (g)
		return g;
	vmat *ng = realloc(s->g, (s->ng + 1) * sizeof(*s->g));
	if (!ng)
		return NULL;
	s->g = ng;
	g = &s->g[s->ng++];
	vmat_init(g, dim);
	return g;
}

/* ---- id map ------------------------------------------------------------ */

static size_t map_home(const vindex *ix, int64_t id)
{
	uint64_t h = (uint64_t)id * UINT64_C(0x9e3779b97f4a7c15);
	return (size_t)(h >> 32) & (ix->mapcap - 1);
}

static void map_put(vindex *ix, uint32_t h)
{
	size_t mask = ix->mapcap - 1, i = map_home(ix, ix->e[h].id);
	while (ix->map[i] != VINDEX_NONE)
		i = (i + 1) & mask;
	ix->map[i] = h;
}

static size_t map_slot(const vindex *ix, int64_t id)
{
	if (!ix->mapcap)
		return SIZE_MAX;
	size_t mask = ix->mapcap - 1;
	for (size_t i = map_home(ix, id); ix->map[i] != VINDEX_NONE; i = (i + 1) & mask)
		if (ix->e[ix->map[i]].id == id)
			return i;
	return SIZE_MAX;
}

/* Linear-probing deletion by backward shift: no tombstones. */
static void map_del(vindex *ix, int64_t id)
{
	size_t i = map_slot(ix, id);
	if (i == SIZE_MAX)
		return;
	size_t mask = ix->mapcap - 1;
	for (size_t j = (i + 1) & mask; ix->map[j] != VINDEX_NONE; j = (j + 1) & mask) {
		size_t k = map_home(ix, ix->e[ix->map[j]].id);
		/* Move j into the hole at i unless its home lies in (i, j]. */
		int stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
		if (!stays) {
			ix->map[i] = ix->map[j];
			i = j;
		}
	}
	ix->map[i] = VINDEX_NONE;
}

static int map_reserve(vindex *ix, size_t n)
{
	if (n * 2 <= ix->mapcap)
		return 0;
	size_t cap = ix->mapcap ? ix->mapcap : 64;
	while (cap < n * 2)
		cap *= 2;
	uint32_t *nm = malloc(cap * sizeof(*nm));
	if (!nm)
		return -ENOMEM;
	for (size_t i = 0; i < cap; i++)
		nm[i] = VINDEX_NONE;
	free(ix->map);
	ix->map = nm;
	ix->mapcap = cap;
	for (size_t h = 0; h < ix->elen; h++)
		if (ix->e[h].shard != VINDEX_NONE)
			map_put(ix, (uint32_t)h);
	return 0;
}

/* ---- lists ------------------------------------------------------------- */

static void lru_unlink(vindex *ix, uint32_t h)
{
	entry *e = &ix->e[h];
	if (e->lru_prev != VINDEX_NONE)
		ix->e[e->lru_prev].lru_next = e->lru_next;
	else
		ix->lru_first = e->lru_next;
	if (e->lru_next != VINDEX_NONE)
		ix->e[e->lru_next].lru_prev = e->lru_prev;
	else
		ix->lru_last = e->lru_prev;
}

static void lru_append(vindex *ix, uint32_t h)
{
	entry *e = &ix->e[h];
	e->lru_prev = ix->lru_last;
	e->lru_next = VINDEX_NONE;
	if (ix->lru_last != VINDEX_NONE)
		ix->e[ix->lru_last].lru_next = h;
	else
		ix->lru_first = h;
	ix->lru_last = h;
}

static void age_unlink(vindex *ix, uint32_t h)
{
	entry *e = &ix->e[h];
	if (e->age_prev != VINDEX_NONE)
		ix->e[e->age_prev].age_next = e->age_next;
	else
		ix->age_first = e->age_next;
	if (e->age_next != VINDEX_NONE)
		ix->e[e->age_next].age_prev = e->age_prev;
	else
		ix->age_last = e->age_prev;
}

/* Insert after `after` (VINDEX_NONE: at the front). */
static void age_insert_after(vindex *ix, uint32_t h, uint32_t after)
{
	entry *e = &ix->e[h];
	e->age_prev = after;
	e->age_next = after == VINDEX_NONE ? ix->age_first : ix->e[after].age_next;
	if (e->age_next != VINDEX_NONE)
		ix->e[e->age_next].age_prev = h;
	else
		ix->age_last = h;
	if (after != VINDEX_NONE)
		ix->e[after].age_next = h;
	else
		ix->age_first = h;
}

/* New entries are nearly always the newest: walk back from the end. */
static void age_insert(vindex *ix, uint32_t h)
{
	uint32_t after = ix->age_last;
	if (!ix->bulk)
		while (after != VINDEX_NONE && ix->e[after].created > ix->e[h].created)
			after = ix->e[after].age_prev;
	age_insert_after(ix, h, after);
}

/* ---- public ------------------------------------------------------------ */

vindex *vindex_new(size_t builtin_dim, int exact)
{
	if (builtin_dim == 0 || builtin_dim > VINDEX_MAX_DIM)
		return NULL;
	vindex *ix = calloc(1, sizeof(*ix));
	if (!ix)
		return NULL;
	ix->bdim = builtin_dim;
	ix->exact = exact;
	ix->efree = ix->lru_first = ix->lru_last = VINDEX_NONE;
	ix->age_first = ix->age_last = VINDEX_NONE;
	ix->scan = scan_i8_plain;
	ix->dot = dot_f32_plain;
#ifdef VINDEX_X86
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx2"))
		ix->scan = scan_i8_avx2;
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
		ix->dot = dot_f32_avx2;
#endif
	return ix;
}

void vindex_clear(vindex *ix)
{
	for (size_t i = 0; i < ix->ns; i++) {
		vmat_free(&ix->s[i].b);
		for (size_t j = 0; j < ix->s[i].ng; j++)
			vmat_free(&ix->s[i].g[j]);
		free(ix->s[i].g);
		free(ix->s[i].model);
	}
	free(ix->s);
	free(ix->e);
	free(ix->map);
	free(ix->dots);
	ix->s = NULL;
	ix->ns = 0;
	ix->e = NULL;
	ix->elen = ix->ecap = ix->count = 0;
	ix->map = NULL;
	ix->mapcap = 0;
	ix->dots = NULL;
	ix->dotscap = 0;
	ix->efree = ix->lru_first = ix->lru_last = VINDEX_NONE;
	ix->age_first = ix->age_last = VINDEX_NONE;
	ix->bulk = 0;
}

void vindex_free(vindex *ix)
{
	if (!ix)
		return;
	vindex_clear(ix);
	free(ix);
}

int vindex_reserve(vindex *ix, const char *model, size_t mdim)
{
	if (mdim > VINDEX_MAX_DIM)
		return -EINVAL;
	if (ix->efree == VINDEX_NONE && ix->elen == ix->ecap) {
		size_t cap = ix->ecap ? ix->ecap * 2 : 64;
		if (cap >= VINDEX_NONE || grow_array((void **)&ix->e, cap, sizeof(entry)) < 0)
			return -ENOMEM;
		ix->ecap = cap;
	}
	if (map_reserve(ix, ix->count + 1) < 0)
		return -ENOMEM;
	shard *s = get_shard(ix, model);
	if (!s || vmat_reserve(ix, &s->b) < 0)
		return -ENOMEM;
	if (mdim) {
		vmat *g = get_group(s, mdim);
		if (!g || vmat_reserve(ix, g) < 0)
			return -ENOMEM;
	}
	return 0;
}

int vindex_add(vindex *ix, const vindex_item *it, uint32_t *handle)
{
	if (!it->model || !it->builtin ||
	    (it->mvec && (it->mdim == 0 || it->mdim > VINDEX_MAX_DIM)))
		return -EINVAL;
	if (map_slot(ix, it->id) != SIZE_MAX)
		return -EINVAL;
	size_t mdim = it->mvec ? it->mdim : 0;
	int r = vindex_reserve(ix, it->model, mdim);
	if (r < 0)
		return r;
	uint32_t si = 0, gi = VINDEX_NONE;
	shard *s = find_shard(ix, it->model, &si);
	vmat *g = mdim ? find_group(s, mdim, &gi) : NULL;

	uint32_t h;
	if (ix->efree != VINDEX_NONE) {
		h = ix->efree;
		ix->efree = ix->e[h].lru_next;
	} else {
		h = (uint32_t)ix->elen++;
	}
	entry *e = &ix->e[h];
	memset(e, 0, sizeof(*e));
	e->id = it->id;
	e->created = it->created;
	e->last_used = it->last_used;
	e->shard = si;
	e->brow = vmat_push(&s->b, it->builtin, h);
	e->group = gi;
	e->grow = g ? vmat_push(g, it->mvec, h) : 0;
	map_put(ix, h);
	lru_append(ix, h);
	age_insert(ix, h);
	ix->count++;
	if (handle)
		*handle = h;
	return 0;
}

void vindex_remove(vindex *ix, uint32_t h)
{
	if (h >= ix->elen || ix->e[h].shard == VINDEX_NONE)
		return;
	entry *e = &ix->e[h];
	shard *s = &ix->s[e->shard];
	uint32_t moved = vmat_remove(&s->b, e->brow);
	if (moved != VINDEX_NONE)
		ix->e[moved].brow = e->brow;
	if (e->group != VINDEX_NONE) {
		moved = vmat_remove(&s->g[e->group], e->grow);
		if (moved != VINDEX_NONE)
			ix->e[moved].grow = e->grow;
	}
	map_del(ix, e->id);
	lru_unlink(ix, h);
	age_unlink(ix, h);
	e->shard = VINDEX_NONE;
	e->lru_next = ix->efree;
	ix->efree = h;
	ix->count--;
}

void vindex_bulk_begin(vindex *ix)
{
	ix->bulk = 1;
}

typedef struct age_key {
	int64_t created, id;
	uint32_t h;
} age_key;

static int cmp_age(const void *a, const void *b)
{
	const age_key *x = a, *y = b;
	if (x->created != y->created)
		return x->created < y->created ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

int vindex_bulk_end(vindex *ix)
{
	ix->bulk = 0;
	if (ix->count < 2)
		return 0;
	age_key *k = malloc(ix->count * sizeof(*k));
	if (!k)
		return -ENOMEM;
	size_t n = 0;
	for (uint32_t h = ix->age_first; h != VINDEX_NONE; h = ix->e[h].age_next)
		k[n++] = (age_key){ix->e[h].created, ix->e[h].id, h};
	qsort(k, n, sizeof(*k), cmp_age);
	ix->age_first = ix->age_last = VINDEX_NONE;
	for (size_t i = 0; i < n; i++)
		age_insert_after(ix, k[i].h, ix->age_last);
	free(k);
	return 0;
}

int vindex_search(vindex *ix, const char *model, const float *qv, size_t mdim, float min_sim,
                  vindex_hit *hit)
{
	const shard *s = find_shard(ix, model, NULL);
	if (!s)
		return 0;
	const vmat *m = mdim ? find_group(s, mdim, NULL) : &s->b;
	if (!m || m->n == 0)
		return 0;

	/* The query, normalised and quantised like the rows. */
	float *qf = malloc(m->fstride * sizeof(float) + m->qstride);
	if (!qf)
		return -ENOMEM;
	int8_t *qc = (int8_t *)(qf + m->fstride);
	memcpy(qf, qv, m->dim * sizeof(float));
	memset(qf + m->dim, 0, (m->fstride - m->dim) * sizeof(float));
	double qlen = vindex_normalize(qf, m->dim);
	if (!(qlen > 0) || !isfinite(qlen)) {
		free(qf); /* the zero vector is similar to nothing */
		return 0;
	}
	float qs, qe, qn;
	quantise(qf, m->dim, m->qstride, qc, &qs, &qe, &qn);
	float qnorm = (float)sqrt((double)ix->dot(qf, qf, m->fstride));

	size_t best = SIZE_MAX;
	float best_sim = -INFINITY;
	if (ix->exact) {
		for (size_t r = 0; r < m->n; r++) {
			float x = ix->dot(m->f + r * m->fstride, qf, m->fstride);
			if (x > best_sim) {
				best_sim = x;
				best = r;
			}
		}
	} else {
		ix->scan(m->q, m->n, m->qstride, qc, ix->dots);
		float floor = -INFINITY;
		for (size_t r = 0; r < m->n; r++) {
			float approx = m->scale[r] * qs * (float)ix->dots[r];
			float bound = m->qerr[r] * qnorm + m->qnorm[r] * qe + BOUND_SLACK;
			if (approx - bound > floor)
				floor = approx - bound;
		}
		if (floor < min_sim)
			floor = min_sim;
		for (size_t r = 0; r < m->n; r++) {
			float approx = m->scale[r] * qs * (float)ix->dots[r];
			float bound = m->qerr[r] * qnorm + m->qnorm[r] * qe + BOUND_SLACK;
			if (approx + bound < floor)
				continue;
			float x = ix->dot(m->f + r * m->fstride, qf, m->fstride);
			if (x > best_sim) {
				best_sim = x;
				best = r;
			}
		}
	}
	free(qf);
	if (best == SIZE_MAX || !(best_sim >= min_sim))
		return 0;
	hit->handle = m->owner[best];
	hit->id = ix->e[hit->handle].id;
	hit->similarity = best_sim > 1.0f ? 1.0f : best_sim;
	return 1;
}

void vindex_touch(vindex *ix, uint32_t h, int64_t now)
{
	if (h >= ix->elen || ix->e[h].shard == VINDEX_NONE)
		return;
	ix->e[h].last_used = now;
	lru_unlink(ix, h);
	lru_append(ix, h);
}

size_t vindex_count(const vindex *ix)
{
	return ix->count;
}

uint32_t vindex_find(const vindex *ix, int64_t id)
{
	size_t i = map_slot(ix, id);
	return i == SIZE_MAX ? VINDEX_NONE : ix->map[i];
}

int64_t vindex_id(const vindex *ix, uint32_t h)
{
	return ix->e[h].id;
}

int64_t vindex_created(const vindex *ix, uint32_t h)
{
	return ix->e[h].created;
}

uint32_t vindex_lru_first(const vindex *ix)
{
	return ix->lru_first;
}

uint32_t vindex_lru_next(const vindex *ix, uint32_t h)
{
	return ix->e[h].lru_next;
}

uint32_t vindex_age_first(const vindex *ix)
{
	return ix->age_first;
}

uint32_t vindex_age_next(const vindex *ix, uint32_t h)
{
	return ix->e[h].age_next;
}
