/* SPDX-License-Identifier: MIT */
/* The text featurizer of trainer-reference; featurize.h has the recipe. */
#include "featurize.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME  0x100000001b3ULL

/* Kind tags hashed first, so a word never collides with a bigram by
 * construction of the input bytes. */
#define TAG_WORD   'w'
#define TAG_BIGRAM 'b'

static bool is_word_byte(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c >= 0x80;
}

static unsigned char fold(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? (unsigned char)(c - 'A' + 'a') : c;
}

static uint64_t fnv_byte(uint64_t h, unsigned char c)
{
	return (h ^ c) * FNV_PRIME;
}

static uint64_t fnv_word(uint64_t h, const char *w, size_t n)
{
	for (size_t i = 0; i < n; i++)
		h = fnv_byte(h, fold((unsigned char)w[i]));
	return h;
}

/* MurmurHash3's fmix64: FNV-1a alone mixes too little for short inputs. */
static uint64_t fmix(uint64_t h)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return h;
}

static size_t count_words(const char *s)
{
	size_t n = 0;
	bool in = false;
	for (const unsigned char *p = (const unsigned char *)s; s && *p; p++) {
		bool w = is_word_byte(*p);
		n += w && !in;
		in = w;
	}
	return n;
}

size_t featurize_max_terms(const char *prompt, const char *answer)
{
	size_t words = count_words(prompt) + count_words(answer);
	return words ? 2 * words - 1 : 0;
}

typedef struct term_sink {
	uint32_t dim;
	uint32_t *idx;
	size_t n;
	const char *prev; /* the previous word, for the next bigram */
	size_t prev_len;
} term_sink;

static void add_words(term_sink *t, const char *s)
{
	const char *p = s;
	while (p && *p) {
		if (!is_word_byte((unsigned char)*p)) {
			p++;
			continue;
		}
		const char *w = p;
		while (*p && is_word_byte((unsigned char)*p))
			p++;
		size_t len = (size_t)(p - w);
		uint64_t h = fnv_word(fnv_byte(FNV_OFFSET, TAG_WORD), w, len);
		t->idx[t->n++] = (uint32_t)(fmix(h) % t->dim);
		if (t->prev) {
			h = fnv_word(fnv_byte(FNV_OFFSET, TAG_BIGRAM), t->prev, t->prev_len);
			h = fnv_word(fnv_byte(h, ' '), w, len);
			t->idx[t->n++] = (uint32_t)(fmix(h) % t->dim);
		}
		t->prev = w;
		t->prev_len = len;
	}
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

size_t featurize(const char *prompt, const char *answer, uint32_t dim, uint32_t *idx, float *val)
{
	term_sink t = {.dim = dim ? dim : 1, .idx = idx};
	add_words(&t, prompt);
	add_words(&t, answer); /* the "\n" between them only separates words */
	if (t.n == 0)
		return 0;
	qsort(idx, t.n, sizeof(*idx), cmp_u32);
	/* Run-length in place: entry k is written after entries >= k are read. */
	size_t k = 0;
	double sq = 0;
	for (size_t i = 0; i < t.n;) {
		size_t j = i;
		while (j < t.n && idx[j] == idx[i])
			j++;
		double c = (double)(j - i);
		idx[k] = idx[i];
		val[k++] = (float)c;
		sq += c * c;
		i = j;
	}
	double inv = 1.0 / sqrt(sq);
	for (size_t i = 0; i < k; i++)
		val[i] = (float)(val[i] * inv);
	return k;
}
