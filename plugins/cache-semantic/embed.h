/*
 * The built-in embedding of cache-semantic: needs no model, so the cache
 * works on a fresh device and while the backend (and with it any
 * embedding model) is down — exactly when the cache is asked.
 *
 * Words: runs of ASCII letters (folded to lower case), digits and any
 * byte >= 0x80 (so UTF-8 text is kept, unfolded); apostrophes (' and
 * U+2019) are dropped so "what's" = "whats"; every other byte separates.
 * Per word (cut at 32 bytes):
 *   - stop, question and filler words ("the", "how", "what", "best",
 *     "explain", ... 68 of them) count 0.1 of a content word;
 *   - crude suffix stripping: -ies -> -y, -ing, -ed, plural -s;
 *   - a word feature (weight 1) plus the character 3- and 4-grams of
 *     "<word>" (together weight 1, each 1/sqrt(count)); a word with a
 *     digit is exact: only its word feature, weight sqrt(2);
 *   - a bigram feature (weight 1) of each two consecutive content words,
 *     so "5 miles to km" differs from "5 km to miles".
 * Each feature is hashed with FNV-1a 64 (over a one-byte kind tag and the
 * bytes) followed by MurmurHash3's fmix64; h % EMBED_BUILTIN_DIM picks the
 * bucket and the top bit the sign (signed feature hashing).  The vector is
 * L2-normalised, so a dot product is the cosine similarity.  No seeds, no
 * locale; hashing is integer arithmetic and the floats are sums of fixed
 * weights in a fixed order, so the same text gives the same vector on
 * every machine.  About 2 µs for a sentence.
 *
 * The default similarity thresholds (core/config.c, docs/cache-thresholds.md)
 * were picked for exactly this function on tests/data/paraphrase_pairs.tsv;
 * changing it means re-running tools/cache_thresholds and updating them
 * (tests/unit/test_cache_thresholds.c fails until they agree).
 */
#ifndef SOVMESH_CACHE_SEMANTIC_EMBED_H
#define SOVMESH_CACHE_SEMANTIC_EMBED_H

#include <stddef.h>

#define EMBED_BUILTIN_DIM 512

/* Embed `text` (UTF-8, len bytes) into out[EMBED_BUILTIN_DIM].  An empty
 * or all-punctuation text gives the zero vector (similar to nothing). */
void embed_builtin(const char *text, size_t len, float out[EMBED_BUILTIN_DIM]);

/* Cosine similarity of two L2-normalised vectors (their dot product). */
float embed_dot(const float *a, const float *b, size_t dim);

#endif
