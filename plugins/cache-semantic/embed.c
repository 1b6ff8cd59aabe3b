/* SPDX-License-Identifier: MIT */
/*
 * The built-in question embedding; embed.h describes the recipe.  The
 * weights below were chosen on tests/data/paraphrase_pairs.tsv (see
 * docs/cache-thresholds.md); changing any of them changes every
 * similarity, so tools/cache_thresholds must be re-run and the default
 * thresholds updated with it.
 */
#include "embed.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define W_WORD 1.0f   /* a word's own feature */
#define W_GRAMS 1.0f  /* all of a word's n-grams together (L2) */
#define W_BIGRAM 1.0f /* two consecutive content words */
#define W_STOP 0.1f   /* scales stop and question words */
#define GRAM_MIN 3
#define GRAM_MAX 4
#define WORD_MAX 32 /* longer words are cut; no question word is this long */

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

/* FNV-1a 64 over p[0..n), continued from state h. */
static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= FNV_PRIME;
	}
	return h;
}

/* Signed feature hashing.  FNV-1a alone mixes too little for inputs of a
 * few bytes (3-grams used a few dozen of the 512 buckets), so its result
 * goes through MurmurHash3's 64-bit finaliser; then the low bits pick the
 * bucket and the top bit the sign. */
static void add(float *v, uint64_t h, float w)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	v[h % EMBED_BUILTIN_DIM] += (h >> 63) ? -w : w;
}

/* Function words, question words and filler: rewordings of the same
 * question differ mostly in these ("how do I" / "what's the best way to"),
 * so they count a tenth of a content word.  Sorted (bsearch). */
static const char *const stop_words[] = {
	"a",     "about", "am",    "an",    "and",  "any",   "are",  "as",    "at",     "be",
	"best",  "by",    "can",   "could", "did",  "do",    "does", "explain", "for",  "from",
	"get",   "give",  "have",  "hey",   "how",  "i",     "if",   "im",    "in",     "is",
	"it",    "its",   "know",  "like",  "me",   "my",    "of",   "ok",    "okay",   "on",
	"or",    "please", "should", "so",  "some", "tell",  "that", "the",   "there",  "this",
	"tips",  "to",    "want",  "was",   "way",  "were",  "what", "whats", "when",   "where",
	"which", "who",   "why",   "will",  "with", "would", "you",  "your",
};

typedef struct word_key {
	const char *w;
	size_t n;
} word_key;

static int cmp_stop(const void *key, const void *elem)
{
	const word_key *k = key;
	const char *s = *(const char *const *)elem;
	size_t sn = strlen(s);
	int c = memcmp(k->w, s, k->n < sn ? k->n : sn);
	if (c)
		return c;
	return (k->n > sn) - (k->n < sn);
}

static bool is_stop(const char *w, size_t n)
{
	word_key k = {w, n};
	return bsearch(&k, stop_words, sizeof(stop_words) / sizeof(stop_words[0]),
		       sizeof(stop_words[0]), cmp_stop) != NULL;
}

static bool ends(const char *w, size_t n, const char *suf)
{
	size_t k = strlen(suf);
	return n >= k && memcmp(w + n - k, suf, k) == 0;
}

/* Crude English suffix stripping, so "eggs"/"egg" and "boiling"/"boiled"
 * share their features; returns the new length (may rewrite w). */
static size_t stem(char *w, size_t n)
{
	if (n > 4 && ends(w, n, "ies")) {
		w[n - 3] = 'y';
		return n - 2;
	}
	if (n > 5 && ends(w, n, "ing"))
		return n - 3;
	if (n > 4 && ends(w, n, "ed"))
		return n - 2;
	if (n > 3 && ends(w, n, "s") && !ends(w, n, "ss") && !ends(w, n, "us") &&
	    !ends(w, n, "is"))
		return n - 1;
	return n;
}

static bool has_digit(const char *w, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (w[i] >= '0' && w[i] <= '9')
			return true;
	return false;
}

typedef struct embedder {
	float *v;
	char prev[WORD_MAX]; /* the last content word, for bigrams */
	size_t prev_n;
} embedder;

static void add_word(embedder *e, char *w, size_t n)
{
	bool stop = is_stop(w, n);
	float scale = stop ? W_STOP : 1.0f;

	if (has_digit(w, n)) {
		/* Numbers are exact: "2014" is not a typo of "2018", so no
		 * n-grams, and the word carries the whole weight. */
		add(e->v, fnv1a(fnv1a(FNV_OFFSET, "w", 1), w, n),
		    sqrtf(W_WORD * W_WORD + W_GRAMS * W_GRAMS));
	} else {
		n = stem(w, n);
		add(e->v, fnv1a(fnv1a(FNV_OFFSET, "w", 1), w, n), W_WORD * scale);

		/* Character n-grams of "<word>" survive typos and inflection.
		 * Each word's n-grams share W_GRAMS, so long words do not
		 * outweigh short ones. */
		unsigned char b[WORD_MAX + 2];
		size_t bn = n + 2, count = 0;
		b[0] = '<';
		memcpy(b + 1, w, n);
		b[n + 1] = '>';
		for (size_t g = GRAM_MIN; g <= GRAM_MAX; g++)
			if (bn >= g)
				count += bn - g + 1;
		float gw = W_GRAMS * scale / sqrtf((float)count);
		uint64_t hg = fnv1a(FNV_OFFSET, "g", 1);
		for (size_t g = GRAM_MIN; g <= GRAM_MAX; g++)
			for (size_t i = 0; i + g <= bn; i++)
				add(e->v, fnv1a(hg, b + i, g), gw);
	}
	if (stop)
		return;

	/* Word order matters in "5 miles to km" / "5 km to miles". */
	if (e->prev_n) {
		uint64_t h = fnv1a(FNV_OFFSET, "b", 1);
		h = fnv1a(h, e->prev, e->prev_n);
		h = fnv1a(h, " ", 1);
		add(e->v, fnv1a(h, w, n), W_BIGRAM);
	}
	memcpy(e->prev, w, n);
	e->prev_n = n;
}

void embed_builtin(const char *text, size_t len, float out[EMBED_BUILTIN_DIM])
{
	const unsigned char *t = (const unsigned char *)text;
	embedder e = {.v = out};
	char w[WORD_MAX];
	size_t n = 0;

	memset(out, 0, EMBED_BUILTIN_DIM * sizeof(float));
	for (size_t i = 0; i <= len; i++) {
		unsigned c = i < len ? t[i] : ' ';

		/* Apostrophes join ("don't" = "dont"), typed or typographic
		 * (U+2019, as phones type it). */
		if (c == '\'')
			continue;
		if (c == 0xe2 && i + 2 < len && t[i + 1] == 0x80 && t[i + 2] == 0x99) {
			i += 2;
			continue;
		}
		if (c >= 'A' && c <= 'Z')
			c += 'a' - 'A';
		if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c >= 0x80) {
			if (n < WORD_MAX)
				w[n++] = (char)c;
			continue;
		}
		if (n) {
			add_word(&e, w, n);
			n = 0;
		}
	}

	float ss = embed_dot(out, out, EMBED_BUILTIN_DIM);
	if (ss > 0.0f) {
		float inv = 1.0f / sqrtf(ss);
		for (size_t k = 0; k < EMBED_BUILTIN_DIM; k++)
			out[k] *= inv;
	}
}

/* Eight independent partial sums: the compiler may vectorise this without
 * -ffast-math (a single running sum would fix the order of additions),
 * and the result is still the same on every machine. */
float embed_dot(const float *a, const float *b, size_t dim)
{
	float acc[8] = {0};
	size_t i = 0;

	for (; i + 8 <= dim; i += 8)
		for (size_t j = 0; j < 8; j++)
			acc[j] += a[i + j] * b[i + j];
	float s = 0.0f;
	for (; i < dim; i++)
		s += a[i] * b[i];
	for (size_t j = 0; j < 8; j++)
		s += acc[j];
	return s;
}
