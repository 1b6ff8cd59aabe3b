/*
 * The text featurizer of trainer-reference: a fixed, seedless map from a
 * (prompt, answer) pair to a sparse unit vector of `dim` values, so that
 * feedback text becomes the numeric input x of the linear head.
 *
 * Text: prompt + "\n" + answer.  Words: runs of ASCII letters (folded to
 * lower case), ASCII digits and any byte >= 0x80 (UTF-8 kept, unfolded);
 * every other byte separates.  Terms: every word, and every two
 * consecutive words as a bigram ("good dog" differs from "dog good").
 * Each term is hashed with FNV-1a 64 (over a one-byte kind tag and the
 * bytes) followed by MurmurHash3's fmix64, and h % dim picks its bucket;
 * a bucket's value is the number of terms that landed in it, and the
 * vector is then L2-normalised (a text without words is the zero vector).
 * Integer hashing and a fixed summation order: the same text gives the
 * same vector on every machine.
 */
#ifndef SOVMESH_TRAINER_REFERENCE_FEATURIZE_H
#define SOVMESH_TRAINER_REFERENCE_FEATURIZE_H

#include <stddef.h>
#include <stdint.h>

/* An upper bound of the number of terms of the pair (either may be NULL):
 * the room featurize() needs in idx and val. */
size_t featurize_max_terms(const char *prompt, const char *answer);

/*
 * Featurize the pair into `dim` (>= 1) buckets: writes the non-zero
 * buckets as ascending indices idx[0..n) with values val[0..n) and
 * returns n (<= dim).  idx and val need room for featurize_max_terms()
 * entries (idx is scratch for the unsorted terms).
 */
size_t featurize(const char *prompt, const char *answer, uint32_t dim, uint32_t *idx, float *val);

#endif
