/* safetensors.c: the parser's checks (one test per malformation), the
 * writer's exact layout, round trips and the file functions. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>
#include <cmocka.h>

#include "safetensors.h"
#include "tensor_set.h"

/* A file image: 8-byte LE length, `header`, then `dlen` bytes of data. */
static unsigned char *image(const char *header, const void *data, size_t dlen, size_t *len)
{
	size_t h = strlen(header);
	unsigned char *buf = malloc(8 + h + dlen + 1);
	assert_non_null(buf);
	for (int i = 0; i < 8; i++)
		buf[i] = (unsigned char)((uint64_t)h >> (8 * i));
	memcpy(buf + 8, header, h);
	if (dlen)
		memcpy(buf + 8 + h, data, dlen);
	*len = 8 + h + dlen;
	return buf;
}

/* Parse with copy 0 and 1; both must fail with `code` and `needle`. */
static void expect_bad(const char *header, size_t dlen, int code, const char *needle)
{
	unsigned char zeros[256] = {0};
	assert_true(dlen <= sizeof(zeros));
	size_t len;
	unsigned char *buf = image(header, zeros, dlen, &len);
	for (int copy = 0; copy <= 1; copy++) {
		sovmesh_tensor_set *set = (void *)1;
		sovmesh_error err = {0};
		int r = safetensors_parse(buf, len, copy, &set, &err);
		if (r != code || !strstr(err.message, needle))
			fail_msg("header %s: got %d '%s', want %d containing '%s'", header, r,
			         err.message, code, needle);
		assert_null(set);
		assert_null(strchr(err.message, '\n'));
	}
	free(buf);
}

static void test_parse_valid(void **state)
{
	(void)state;
	float a[2] = {1.5f, -2.0f};
	uint16_t b[3] = {1, 2, 3};
	unsigned char data[14];
	/* Header in non-sorted order; data: "z" first. */
	memcpy(data, a, 8);
	memcpy(data + 8, b, 6);
	size_t len;
	unsigned char *buf =
	    image("{\"z\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
	          "\"__metadata__\":{\"format\":\"pt\"},"
	          "\"a\":{\"dtype\":\"BF16\",\"shape\":[1,3],"
	          "\"data_offsets\":[8,14]}}   ",
	          data, sizeof(data), &len);
	for (int copy = 0; copy <= 1; copy++) {
		sovmesh_tensor_set *set = NULL;
		sovmesh_error err = {0};
		assert_int_equal(safetensors_parse(buf, len, copy, &set, &err), 0);
		assert_int_equal(set->count, 2);
		assert_string_equal(set->tensors[0].name, "a"); /* sorted */
		assert_string_equal(set->tensors[1].name, "z");
		assert_int_equal(set->tensors[0].dtype, SOVMESH_DTYPE_BF16);
		assert_int_equal(set->tensors[0].ndim, 2);
		assert_int_equal(set->tensors[0].shape[0], 1);
		assert_int_equal(set->tensors[0].shape[1], 3);
		assert_int_equal(set->tensors[0].nbytes, 6);
		assert_memory_equal(set->tensors[0].data, b, 6);
		assert_true(sovmesh_tensor_get(&set->tensors[1], 0) == 1.5);
		assert_true(sovmesh_tensor_get(&set->tensors[1], 1) == -2.0);
		unsigned char *z = set->tensors[1].data;
		if (copy)
			assert_true(z < buf || z >= buf + len);
		else
			assert_ptr_equal(z, buf + len - sizeof(data));
		assert_string_equal(set->metadata_json, "{\"format\":\"pt\"}");
		tset_free(set);
	}
	free(buf);
}

static void test_parse_empty_and_zero_size(void **state)
{
	(void)state;
	size_t len;
	unsigned char *buf = image("{}", NULL, 0, &len);
	sovmesh_tensor_set *set = NULL;
	assert_int_equal(safetensors_parse(buf, len, 0, &set, NULL), 0);
	assert_int_equal(set->count, 0);
	assert_null(set->metadata_json);
	tset_free(set);
	free(buf);

	/* Zero-size tensors may sit anywhere the cursor is, even at the end. */
	unsigned char d[4] = {1, 2, 3, 4};
	buf = image("{\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[0,0]},"
	            "\"s\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[0,4]},"
	            "\"t\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,4]}}",
	            d, 4, &len);
	assert_int_equal(safetensors_parse(buf, len, 1, &set, NULL), 0);
	assert_int_equal(set->count, 3);
	assert_int_equal(set->tensors[0].nbytes, 0);
	assert_int_equal(set->tensors[1].ndim, 0);
	assert_int_equal(set->tensors[1].nbytes, 4);
	tset_free(set);
	free(buf);
}

static void test_parse_too_short(void **state)
{
	(void)state;
	unsigned char buf[7] = {0};
	sovmesh_tensor_set *set = NULL;
	sovmesh_error err = {0};
	assert_int_equal(safetensors_parse(buf, sizeof(buf), 0, &set, &err), -EINVAL);
	assert_non_null(strstr(err.message, "too short"));
	assert_int_equal(safetensors_parse(buf, 0, 1, &set, &err), -EINVAL);
	assert_null(set);
}

static void test_parse_header_limits(void **state)
{
	(void)state;
	unsigned char buf[16] = {0};
	sovmesh_tensor_set *set = NULL;
	sovmesh_error err = {0};
	uint64_t big = SAFETENSORS_MAX_HEADER + 1ull;
	for (int i = 0; i < 8; i++)
		buf[i] = (unsigned char)(big >> (8 * i));
	assert_int_equal(safetensors_parse(buf, sizeof(buf), 0, &set, &err), -E2BIG);
	assert_non_null(strstr(err.message, "exceeds the 100000000-byte limit"));
	/* Huge lengths must not wrap around when added to 8. */
	memset(buf, 0xff, 8);
	assert_int_equal(safetensors_parse(buf, sizeof(buf), 0, &set, &err), -E2BIG);

	/* Within the limit but longer than the file. */
	memset(buf, 0, 8);
	buf[0] = 9;
	memcpy(buf + 8, "{}      ", 8);
	assert_int_equal(safetensors_parse(buf, sizeof(buf), 0, &set, &err), -EINVAL);
	assert_non_null(strstr(err.message, "runs past the end of the file"));
	assert_null(set);
}

static void test_parse_bad_json(void **state)
{
	(void)state;
	expect_bad("{\"a\":", 0, -EINVAL, "not valid JSON");
	expect_bad("{\"a\":{\"dtype\":\"F32\"} x", 0, -EINVAL, "not valid JSON");
	expect_bad("[1,2]", 0, -EINVAL, "does not start with '{'");
	expect_bad("  {}", 0, -EINVAL, "does not start with '{'");
	expect_bad("{\"a\\u0000\":1}", 0, -EINVAL, "not valid JSON");
	expect_bad("{\"\xff\":1}", 0, -EINVAL, "not valid JSON"); /* not UTF-8 */
}

static void test_parse_duplicate_name(void **state)
{
	(void)state;
	expect_bad("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
	           "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
	           2, -EINVAL,
	           "duplicate tensor name or key in header: duplicate object key near '\"a\"'");
	expect_bad(
	    "{\"a\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
	    -EINVAL, "duplicate tensor name or key in header");
}

static void test_parse_bad_entries(void **state)
{
	(void)state;
	expect_bad("{\"a\":[1]}", 0, -EINVAL, "tensor 'a': entry is not a JSON object");
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4,
	           -EINVAL, "tensor 'a': unexpected key 'x'");
	expect_bad("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -EINVAL,
	           "missing \"dtype\"");
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, -EINVAL,
	           "missing \"shape\"");
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, -EINVAL,
	           "missing \"data_offsets\"");
	expect_bad("{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -EINVAL,
	           "\"dtype\" is not a string");
	expect_bad("{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -EINVAL,
	           "unknown dtype 'F33'");
	expect_bad("{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -EINVAL,
	           "unknown dtype 'f32'");
	/* Names from the file cannot break the message onto two lines. */
	expect_bad("{\"a\\nb\":{\"dtype\":\"Q\\r\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
	           -EINVAL, "tensor 'a?b': unknown dtype 'Q?'");
}

static void test_parse_bad_shapes(void **state)
{
	(void)state;
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":3,\"data_offsets\":[0,12]}}", 12, -EINVAL,
	           "\"shape\" is not an array");
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, -EINVAL,
	           "shape entry 0 is not a non-negative integer");
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1.0],\"data_offsets\":[0,4]}}", 4,
	           -EINVAL, "shape entry 1 is not a non-negative integer");
	expect_bad("{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
	           "\"data_offsets\":[0,1]}}",
	           1, -EINVAL, "9 dimensions, at most 8");
	/* 2^32 * 2^32 wraps to 0 in 64 bits, which would "match" [0,0]. */
	expect_bad("{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],"
	           "\"data_offsets\":[0,0]}}",
	           0, -EINVAL, "overflows");
	/* numel fits, numel * 8 does not. */
	expect_bad("{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],"
	           "\"data_offsets\":[0,0]}}",
	           0, -EINVAL, "overflows");
	/* Larger than any JSON integer jansson keeps. */
	expect_bad("{\"a\":{\"dtype\":\"U8\",\"shape\":[99999999999999999999],"
	           "\"data_offsets\":[0,0]}}",
	           0, -EINVAL, "not valid JSON");
}

static void test_parse_bad_offsets(void **state)
{
	(void)state;
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, -EINVAL,
	           "\"data_offsets\" is not [begin, end]");
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4, -EINVAL,
	           "\"data_offsets\" is not [begin, end]");
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, -EINVAL,
	           "end before they begin");
	/* Size / shape mismatch. */
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, -EINVAL,
	           "hold 4 bytes, dtype F32 and shape need 8");
	/* Truncated: the tensor needs bytes the file does not have. */
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 5, -EINVAL,
	           "run past the end of the data section (5 bytes)");
	/* Overlap. */
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
	           "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
	           8, -EINVAL, "overlap tensor 'a'");
	/* Same range twice. */
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
	           "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
	           4, -EINVAL, "overlap");
	/* Gap at the start and in the middle. */
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, -EINVAL,
	           "gap in the data section: bytes [0, 4)");
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
	           "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[6,10]}}",
	           10, -EINVAL, "gap in the data section: bytes [4, 6)");
	/* Trailing bytes, with tensors and without. */
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 7, -EINVAL,
	           "3 trailing bytes");
	expect_bad("{}", 1, -EINVAL, "1 trailing bytes");
}

static void test_parse_bad_metadata(void **state)
{
	(void)state;
	expect_bad("{\"__metadata__\":[\"x\"]}", 0, -EINVAL,
	           "\"__metadata__\" is not a JSON object");
	expect_bad("{\"__metadata__\":{\"k\":1}}", 0, -EINVAL,
	           "\"__metadata__\" value for 'k' is not a string");
}

/* Serialize then parse; the result must equal the input tensor by tensor. */
static void round_trip(const sovmesh_tensor_set *in)
{
	void *buf;
	size_t len;
	sovmesh_error err = {0};
	assert_int_equal(safetensors_serialize(in, &buf, &len, &err), 0);
	uint64_t hlen = 0;
	for (int i = 7; i >= 0; i--)
		hlen = (hlen << 8) | ((unsigned char *)buf)[i];
	assert_int_equal(hlen % 8, 0);
	sovmesh_tensor_set *out = NULL;
	if (safetensors_parse(buf, len, 1, &out, &err) != 0)
		fail_msg("re-parse: %s", err.message);
	assert_int_equal(out->count, in->count);
	for (size_t i = 0; i < in->count; i++) {
		/* `in` is sorted in these tests. */
		const sovmesh_tensor *a = &in->tensors[i], *b = &out->tensors[i];
		assert_string_equal(a->name, b->name);
		assert_int_equal(a->dtype, b->dtype);
		assert_int_equal(a->ndim, b->ndim);
		for (uint32_t d = 0; d < a->ndim; d++)
			assert_int_equal(a->shape[d], b->shape[d]);
		assert_int_equal(a->nbytes, b->nbytes);
		if (a->nbytes)
			assert_memory_equal(a->data, b->data, a->nbytes);
	}
	tset_free(out);
	free(buf);
}

static void test_round_trip_dtypes(void **state)
{
	(void)state;
	const sovmesh_dtype types[] = {SOVMESH_DTYPE_F32, SOVMESH_DTYPE_F16, SOVMESH_DTYPE_BF16,
	                               SOVMESH_DTYPE_F64};
	const double vals[] = {0.0, -0.0, 1.0, -2.5, 0.1, 65504.0, 1e-3, 3.140625};
	for (size_t k = 0; k < 4; k++) {
		sovmesh_tensor_set *set = tset_new(NULL, 2);
		uint64_t shape[2] = {2, 4};
		assert_int_equal(tset_init_tensor(set, 0, "m.lora_A.weight", types[k], 2, shape),
		                 0);
		assert_int_equal(tset_init_tensor(set, 1, "m.lora_B.weight", types[k], 1, shape),
		                 0);
		for (int i = 0; i < 8; i++)
			sovmesh_tensor_set_value(&set->tensors[0], (uint64_t)i, vals[i]);
		sovmesh_tensor_set_value(&set->tensors[1], 1, -7.0);
		round_trip(set);
		tset_free(set);
	}
}

static void test_round_trip_special(void **state)
{
	(void)state;
	/* Empty set. */
	sovmesh_tensor_set *set = tset_new(NULL, 0);
	round_trip(set);
	void *buf;
	size_t len;
	assert_int_equal(safetensors_serialize(set, &buf, &len, NULL), 0);
	assert_int_equal(len, 16);
	assert_memory_equal(buf, "\x08\0\0\0\0\0\0\0{}      ", 16);
	free(buf);
	tset_free(set);

	/* Scalar and zero-size tensors, metadata. */
	set = tset_new(NULL, 3);
	uint64_t zshape[2] = {0, 5};
	assert_int_equal(tset_init_tensor(set, 0, "scalar", SOVMESH_DTYPE_F64, 0, NULL), 0);
	assert_int_equal(tset_init_tensor(set, 1, "zero", SOVMESH_DTYPE_F32, 2, zshape), 0);
	assert_int_equal(tset_init_tensor(set, 2, "zz", SOVMESH_DTYPE_U8, 1, zshape + 1), 0);
	sovmesh_tensor_set_value(&set->tensors[0], 0, 42.25);
	memcpy(set->tensors[2].data, "hello", 5);
	assert_int_equal(tset_set_metadata(set, "{\"format\":\"pt\",\"a\":\"b\"}"), 0);
	round_trip(set);
	assert_int_equal(safetensors_serialize(set, &buf, &len, NULL), 0);
	sovmesh_tensor_set *back = NULL;
	assert_int_equal(safetensors_parse(buf, len, 0, &back, NULL), 0);
	assert_string_equal(back->metadata_json, "{\"format\":\"pt\",\"a\":\"b\"}");
	assert_true(sovmesh_tensor_get(&back->tensors[0], 0) == 42.25);
	tset_free(back);
	free(buf);
	tset_free(set);
}

/* Byte-exact against what the reference (Rust safetensors) writes. */
static void test_serialize_layout(void **state)
{
	(void)state;
	sovmesh_tensor_set *set = tset_new(NULL, 2);
	uint64_t two = 2, one = 1;
	/* Out of order on purpose: output is sorted by name. */
	assert_int_equal(tset_init_tensor(set, 0, "b", SOVMESH_DTYPE_F32, 1, &one), 0);
	assert_int_equal(tset_init_tensor(set, 1, "a", SOVMESH_DTYPE_F32, 1, &two), 0);
	sovmesh_tensor_set_value(&set->tensors[0], 0, 3.0);
	sovmesh_tensor_set_value(&set->tensors[1], 0, 1.0);
	sovmesh_tensor_set_value(&set->tensors[1], 1, 2.0);
	void *buf;
	size_t len;
	assert_int_equal(safetensors_serialize(set, &buf, &len, NULL), 0);
	const char *hdr = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
	                  "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}";
	size_t h = strlen(hdr), padded = (h + 7) / 8 * 8;
	assert_int_equal(len, 8 + padded + 12);
	unsigned char *p = buf;
	assert_int_equal(p[0], padded);
	assert_memory_equal(p + 8, hdr, h);
	for (size_t i = h; i < padded; i++)
		assert_int_equal(p[8 + i], ' ');
	float f[3];
	memcpy(f, p + 8 + padded, 12);
	assert_true(f[0] == 1.0f && f[1] == 2.0f && f[2] == 3.0f);
	free(buf);
	tset_free(set);
}

static void test_serialize_refuses(void **state)
{
	(void)state;
	sovmesh_error err = {0};
	void *buf = NULL;
	size_t len;
	uint64_t one = 1;
	sovmesh_tensor_set *set = tset_new(NULL, 2);
	assert_int_equal(tset_init_tensor(set, 0, "x", SOVMESH_DTYPE_F32, 1, &one), 0);
	/* Blank tensor 1. */
	assert_int_equal(safetensors_serialize(set, &buf, &len, &err), -EINVAL);
	assert_non_null(strstr(err.message, "tensor 1 has no name"));
	assert_int_equal(tset_init_tensor(set, 1, "x", SOVMESH_DTYPE_F32, 1, &one), 0);
	assert_int_equal(safetensors_serialize(set, &buf, &len, &err), -EINVAL);
	assert_non_null(strstr(err.message, "duplicate tensor name 'x'"));
	tset_free(set);

	set = tset_new(NULL, 1);
	assert_int_equal(tset_init_tensor(set, 0, "__metadata__", SOVMESH_DTYPE_F32, 1, &one), 0);
	assert_int_equal(safetensors_serialize(set, &buf, &len, &err), -EINVAL);
	assert_non_null(strstr(err.message, "reserved"));
	tset_free(set);

	set = tset_new(NULL, 1);
	assert_int_equal(tset_init_tensor(set, 0, "y", SOVMESH_DTYPE_F32, 1, &one), 0);
	set->tensors[0].nbytes = 3; /* a plugin got it wrong */
	assert_int_equal(safetensors_serialize(set, &buf, &len, &err), -EINVAL);
	assert_non_null(strstr(err.message, "has 3 bytes of data"));
	set->tensors[0].nbytes = 4;
	assert_int_equal(tset_set_metadata(set, "{\"k\":[1]}"), 0);
	assert_int_equal(safetensors_serialize(set, &buf, &len, &err), -EINVAL);
	assert_non_null(strstr(err.message, "not a string"));
	assert_int_equal(tset_set_metadata(set, "{nope"), 0);
	assert_int_equal(safetensors_serialize(set, &buf, &len, &err), -EINVAL);
	assert_non_null(strstr(err.message, "metadata is not valid JSON"));
	assert_null(buf);
	tset_free(set);
}

static char tmpdir[256];

static int setup_tmp(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_safetensors.XXXXXX");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_tmp(void **state)
{
	(void)state;
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static size_t count_dir_entries(const char *dir)
{
	DIR *d = opendir(dir);
	assert_non_null(d);
	size_t n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

static void test_write_and_read_file(void **state)
{
	(void)state;
	char path[512];
	snprintf(path, sizeof(path), "%s/w.safetensors", tmpdir);
	sovmesh_tensor_set *set = tset_new(NULL, 1);
	uint64_t shape[2] = {3, 2};
	assert_int_equal(tset_init_tensor(set, 0, "w", SOVMESH_DTYPE_BF16, 2, shape), 0);
	for (int i = 0; i < 6; i++)
		sovmesh_tensor_set_value(&set->tensors[0], (uint64_t)i, i * 0.5);
	sovmesh_error err = {0};
	assert_int_equal(safetensors_write_file(path, set, &err), 0);
	/* Overwrite in place: still one file, no temp files left behind. */
	sovmesh_tensor_set_value(&set->tensors[0], 5, -1.0);
	assert_int_equal(safetensors_write_file(path, set, &err), 0);
	assert_int_equal(count_dir_entries(tmpdir), 1);
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);

	sovmesh_tensor_set *back = NULL;
	assert_int_equal(safetensors_read_file(path, &back, &err), 0);
	assert_int_equal(back->count, 1);
	assert_true(sovmesh_tensor_get(&back->tensors[0], 4) == 2.0);
	assert_true(sovmesh_tensor_get(&back->tensors[0], 5) == -1.0);
	/* The mapping is private: editing the set leaves the file alone. */
	sovmesh_tensor_set_value(&back->tensors[0], 0, 9.0);
	tset_free(back);
	assert_int_equal(safetensors_read_file(path, &back, &err), 0);
	assert_true(sovmesh_tensor_get(&back->tensors[0], 0) == 0.0);
	tset_free(back);
	tset_free(set);
	unlink(path);
}

static void test_file_errors_name_path(void **state)
{
	(void)state;
	char path[512];
	sovmesh_error err = {0};
	sovmesh_tensor_set *set = NULL;

	snprintf(path, sizeof(path), "%s/missing.safetensors", tmpdir);
	assert_int_equal(safetensors_read_file(path, &set, &err), -ENOENT);
	assert_true(strncmp(err.message, path, strlen(path)) == 0);

	assert_int_equal(safetensors_read_file(tmpdir, &set, &err), -EINVAL);
	assert_non_null(strstr(err.message, "not a regular file"));

	/* Truncated file: messages start with the path, then say why. */
	snprintf(path, sizeof(path), "%s/trunc.safetensors", tmpdir);
	size_t len;
	unsigned char *buf =
	    image("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
	          "0123456789abcdef", 16, &len);
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(buf, 1, len - 3, f), len - 3);
	fclose(f);
	assert_int_equal(safetensors_read_file(path, &set, &err), -EINVAL);
	assert_true(strncmp(err.message, path, strlen(path)) == 0);
	assert_non_null(strstr(err.message, ": tensor 'a': data_offsets [0, 16] run past"));
	assert_null(set);
	free(buf);

	/* Empty file. */
	f = fopen(path, "wb");
	fclose(f);
	assert_int_equal(safetensors_read_file(path, &set, &err), -EINVAL);
	assert_non_null(strstr(err.message, "too short"));
	unlink(path);

	/* Writing into a missing directory. */
	snprintf(path, sizeof(path), "%s/no/such/dir/x.safetensors", tmpdir);
	set = tset_new(NULL, 0);
	assert_int_equal(safetensors_write_file(path, set, &err), -ENOENT);
	assert_true(strncmp(err.message, path, strlen(path)) == 0);
	assert_non_null(strstr(err.message, "temporary file"));
	tset_free(set);

	/* Writer refusals also name the path. */
	set = tset_new(NULL, 1);
	snprintf(path, sizeof(path), "%s/blank.safetensors", tmpdir);
	assert_int_equal(safetensors_write_file(path, set, &err), -EINVAL);
	assert_true(strncmp(err.message, path, strlen(path)) == 0);
	assert_int_equal(count_dir_entries(tmpdir), 0);
	tset_free(set);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse_valid),
	    cmocka_unit_test(test_parse_empty_and_zero_size),
	    cmocka_unit_test(test_parse_too_short),
	    cmocka_unit_test(test_parse_header_limits),
	    cmocka_unit_test(test_parse_bad_json),
	    cmocka_unit_test(test_parse_duplicate_name),
	    cmocka_unit_test(test_parse_bad_entries),
	    cmocka_unit_test(test_parse_bad_shapes),
	    cmocka_unit_test(test_parse_bad_offsets),
	    cmocka_unit_test(test_parse_bad_metadata),
	    cmocka_unit_test(test_round_trip_dtypes),
	    cmocka_unit_test(test_round_trip_special),
	    cmocka_unit_test(test_serialize_layout),
	    cmocka_unit_test(test_serialize_refuses),
	    cmocka_unit_test(test_write_and_read_file),
	    cmocka_unit_test(test_file_errors_name_path),
	};
	return cmocka_run_group_tests(tests, setup_tmp, teardown_tmp);
}
