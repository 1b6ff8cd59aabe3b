/* qr.c and qr_scan.c: every renderer checked module by module against
 * libqrencode, PNG and JPEG round trips through the scanner (several pixel
 * formats), and one test per refusal with its message. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include <jpeglib.h>
#include <png.h>
#include <qrencode.h>

#include "qr.h"
#include "qr_scan.h"

/* What `sovmesh pair code --qr` encodes: about 250 characters. */
static const char *const PAIR_URI =
    "sovmesh://pair?v=1&name=kitchen-laptop%20%C3%A9t%C3%A9"
    "&fp=3f6a1c0e9b2d47a8c5e1f0b3d2a49c8e7f6b5a4d3c2b1a09f8e7d6c5b4a39281"
    "&code=7K3QF-M9XPA&addr=192.168.1.23:47471&addr=10.0.0.5:47471"
    "&addr=%5Bfe80::1c2b:3dff:fe4e:5f60%5D:47471&port=47470";
static const char *const SHORT = "hello";

static char tmpdir[64];

static int setup(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/sovmesh-test-qr.XXXXXX");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static char *tmp_path(const char *name)
{
	static char path[128];
	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	return path;
}

static void write_file(const char *path, const void *buf, size_t len)
{
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	if (len)
		assert_int_equal(fwrite(buf, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
}

static unsigned char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	long n = ftell(f);
	assert_true(n > 0);
	rewind(f);
	unsigned char *buf = malloc((size_t)n);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	*len = (size_t)n;
	return buf;
}

/* The reference matrix: dark[y * n + x] with the quiet zone, n returned. */
static unsigned char *reference(const char *data, int *n)
{
	QRcode *qr = QRcode_encodeString8bit(data, 0, QR_ECLEVEL_M);
	assert_non_null(qr);
	*n = qr->width + 2 * QR_QUIET_ZONE;
	unsigned char *m = calloc((size_t)*n * (size_t)*n, 1);
	assert_non_null(m);
	for (int y = 0; y < qr->width; y++)
		for (int x = 0; x < qr->width; x++)
			m[(y + QR_QUIET_ZONE) * *n + x + QR_QUIET_ZONE] =
			    qr->data[y * qr->width + x] & 1;
	QRcode_free(qr);
	return m;
}

/* Scan and expect `want`. */
static void expect_scan_memory(const void *buf, size_t len, const char *want)
{
	char *text = NULL;
	sovmesh_error err = {0};
	int r = qr_scan_memory(buf, len, "mem", &text, &err);
	if (r != 0)
		fail_msg("scan failed: %d %s", r, err.message);
	assert_string_equal(text, want);
	free(text);
}

/* Scan `path` and expect refusal `code` with a one-line message holding
 * the path and `needle`. */
static void expect_refused(const char *path, int code, const char *needle)
{
	char *text = (char *)1;
	sovmesh_error err = {0};
	int r = qr_scan_file(path, &text, &err);
	if (r != code || !strstr(err.message, needle) || strncmp(err.message, path, strlen(path)))
		fail_msg("%s: got %d '%s', want %d with '%s'", path, r, err.message, code, needle);
	assert_null(text);
	assert_null(strchr(err.message, '\n'));
}

/* ---- writers used to make test images -------------------------------- */

typedef struct membuf {
	unsigned char *buf;
	size_t len, cap;
} membuf;

static void membuf_write(png_structp png, png_bytep data, size_t n)
{
	membuf *m = png_get_io_ptr(png);
	if (m->len + n > m->cap) {
		m->cap = (m->len + n) * 2;
		m->buf = realloc(m->buf, m->cap);
		assert_non_null(m->buf);
	}
	memcpy(m->buf + m->len, data, n);
	m->len += n;
}

static void membuf_flush(png_structp png)
{
	(void)png;
}

enum png_variant {
	PV_GRAY8_ADAM7,
	PV_GRAY1,
	PV_GRAY16,
	PV_RGB8,
	PV_RGBA_TRANSPARENT,
	PV_PALETTE1,
};

/* Encode gray pixels (0/255) in the given PNG flavour. */
static unsigned char *write_png_variant(const unsigned char *gray, int side, enum png_variant v,
                                        size_t *len)
{
	membuf m = {0};
	png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
	assert_non_null(png);
	png_infop info = png_create_info_struct(png);
	assert_non_null(info);
	png_set_write_fn(png, &m, membuf_write, membuf_flush);
	int type = PNG_COLOR_TYPE_GRAY, depth = 8, interlace = PNG_INTERLACE_NONE, bpp = 1;
	switch (v) {
	case PV_GRAY8_ADAM7:
		interlace = PNG_INTERLACE_ADAM7;
		break;
	case PV_GRAY1:
		depth = 1;
		break;
	case PV_GRAY16:
		depth = 16;
		bpp = 2;
		break;
	case PV_RGB8:
		type = PNG_COLOR_TYPE_RGB;
		bpp = 3;
		break;
	case PV_RGBA_TRANSPARENT:
		type = PNG_COLOR_TYPE_RGB_ALPHA;
		bpp = 4;
		break;
	case PV_PALETTE1:
		type = PNG_COLOR_TYPE_PALETTE;
		depth = 1;
		break;
	}
	png_set_IHDR(png, info, (png_uint_32)side, (png_uint_32)side, depth, type, interlace,
	             PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
	if (v == PV_PALETTE1) {
		/* Index 0 is white, so light pixels are zero bits. */
		png_color pal[2] = {{255, 255, 255}, {0, 0, 0}};
		png_set_PLTE(png, info, pal, 2);
	}
	png_write_info(png, info);
	size_t rowbytes = depth == 1 ? ((size_t)side + 7) / 8 : (size_t)side * (size_t)bpp;
	unsigned char *rows = calloc((size_t)side, rowbytes);
	png_bytep *rp = calloc((size_t)side, sizeof(*rp));
	assert_non_null(rows);
	assert_non_null(rp);
	for (int y = 0; y < side; y++) {
		unsigned char *row = rows + (size_t)y * rowbytes;
		rp[y] = row;
		for (int x = 0; x < side; x++) {
			unsigned g = gray[y * side + x];
			switch (v) {
			case PV_GRAY8_ADAM7:
				row[x] = (unsigned char)g;
				break;
			case PV_GRAY1:
				if (g)
					row[x / 8] |= (unsigned char)(0x80 >> (x % 8));
				break;
			case PV_PALETTE1:
				if (!g)
					row[x / 8] |= (unsigned char)(0x80 >> (x % 8));
				break;
			case PV_GRAY16:
				row[2 * x] = row[2 * x + 1] = (unsigned char)g;
				break;
			case PV_RGB8:
				/* Coloured: dark blue on pale yellow. */
				row[3 * x] = g ? 250 : 10;
				row[3 * x + 1] = g ? 245 : 20;
				row[3 * x + 2] = g ? 200 : 90;
				break;
			case PV_RGBA_TRANSPARENT:
				/* Light modules fully transparent black: only
				 * compositing on white keeps them light. */
				row[4 * x + 3] = g ? 0 : 255;
				break;
			}
		}
	}
	png_write_image(png, rp);
	png_write_end(png, info);
	png_destroy_write_struct(&png, &info);
	free(rows);
	free(rp);
	*len = m.len;
	return m.buf;
}

/* A JPEG of gray pixels, quality 90; as RGB (YCbCr inside) and/or
 * progressive when asked. */
static unsigned char *write_jpeg(const unsigned char *gray, int side, int color, int progressive,
                                 size_t *len)
{
	struct jpeg_compress_struct cc;
	struct jpeg_error_mgr je;
	cc.err = jpeg_std_error(&je);
	jpeg_create_compress(&cc);
	unsigned char *out = NULL;
	unsigned long outlen = 0;
	jpeg_mem_dest(&cc, &out, &outlen);
	cc.image_width = (JDIMENSION)side;
	cc.image_height = (JDIMENSION)side;
	cc.input_components = color ? 3 : 1;
	cc.in_color_space = color ? JCS_RGB : JCS_GRAYSCALE;
	jpeg_set_defaults(&cc);
	jpeg_set_quality(&cc, 90, TRUE);
	if (progressive)
		jpeg_simple_progression(&cc);
	jpeg_start_compress(&cc, TRUE);
	unsigned char *row = malloc((size_t)side * 3);
	assert_non_null(row);
	while (cc.next_scanline < cc.image_height) {
		const unsigned char *src = gray + (size_t)cc.next_scanline * (size_t)side;
		if (color) {
			for (int x = 0; x < side; x++) {
				row[3 * x] = src[x] ? 255 : 40;
				row[3 * x + 1] = src[x] ? 250 : 0;
				row[3 * x + 2] = src[x] ? 240 : 0;
			}
		} else {
			memcpy(row, src, (size_t)side);
		}
		JSAMPROW rp = row;
		jpeg_write_scanlines(&cc, &rp, 1);
	}
	jpeg_finish_compress(&cc);
	jpeg_destroy_compress(&cc);
	free(row);
	*len = outlen;
	return out;
}

/* ---- renderers --------------------------------------------------------- */

static void test_text(void **state)
{
	(void)state;
	const char *inputs[] = {PAIR_URI, SHORT};
	for (size_t i = 0; i < 2; i++) {
		int n;
		unsigned char *ref = reference(inputs[i], &n);
		char *out = NULL;
		sovmesh_error err = {0};
		assert_int_equal(qr_render_text(inputs[i], &out, &err), 0);
		/* Decode the half blocks back into modules. */
		int lines = 0;
		const char *p = out;
		while (*p) {
			int x = 0;
			while (*p != '\n') {
				int top = 0, bottom = 0;
				if (*p == ' ') {
					top = bottom = 0;
					p++;
				} else if (!strncmp(p, "\u2580", 3)) {
					top = 1, bottom = 0;
					p += 3;
				} else if (!strncmp(p, "\u2584", 3)) {
					top = 0, bottom = 1;
					p += 3;
				} else if (!strncmp(p, "\u2588", 3)) {
					top = bottom = 1;
					p += 3;
				} else {
					fail_msg("unexpected byte 0x%02x at line %d",
					         (unsigned char)*p, lines);
				}
				assert_true(x < n);
				assert_int_equal(top, ref[2 * lines * n + x]);
				if (2 * lines + 1 < n)
					assert_int_equal(bottom, ref[(2 * lines + 1) * n + x]);
				else
					assert_int_equal(bottom, 0);
				x++;
			}
			assert_int_equal(x, n);
			p++;
			lines++;
		}
		assert_int_equal(lines, (n + 1) / 2);
		free(out);
		free(ref);
	}
}

/* Rasterise the SVG's path ("MX Yh N v1h-N z" runs) and compare with the
 * reference, module by module. */
static void test_svg(void **state)
{
	(void)state;
	const char *inputs[] = {PAIR_URI, SHORT};
	for (size_t i = 0; i < 2; i++) {
		int n;
		unsigned char *ref = reference(inputs[i], &n);
		char *svg = NULL;
		sovmesh_error err = {0};
		assert_int_equal(qr_render_svg(inputs[i], &svg, &err), 0);
		assert_memory_equal(svg, "<svg", 4);
		size_t sl = strlen(svg);
		assert_true(sl > 7);
		assert_string_equal(svg + sl - 7, "</svg>\n");
		char want[128];
		snprintf(want, sizeof(want), "viewBox=\"0 0 %d %d\"", n, n);
		assert_non_null(strstr(svg, want));
		snprintf(want, sizeof(want), "width=\"%d\" height=\"%d\"",
		         n * QR_SVG_PIXELS_PER_MODULE, n * QR_SVG_PIXELS_PER_MODULE);
		assert_non_null(strstr(svg, want));
		assert_non_null(strstr(svg, "shape-rendering=\"crispEdges\""));
		/* Exactly one path. */
		const char *path = strstr(svg, "<path");
		assert_non_null(path);
		assert_null(strstr(path + 1, "<path"));
		const char *d = strstr(path, " d=\"");
		assert_non_null(d);
		d += 4;
		unsigned char *got = calloc((size_t)n * (size_t)n, 1);
		assert_non_null(got);
		size_t dark_ref = 0, dark_got = 0;
		for (int k = 0; k < n * n; k++)
			dark_ref += ref[k];
		while (*d != '"') {
			int x, y, w, w2, used = 0;
			if (sscanf(d, "M%d %dh%dv1h-%dz%n", &x, &y, &w, &w2, &used) != 4 || !used)
				fail_msg("bad path at '%.20s'", d);
			assert_int_equal(w, w2);
			assert_true(x >= 0 && y >= 0 && w > 0 && x + w <= n && y < n);
			for (int k = 0; k < w; k++) {
				assert_int_equal(got[y * n + x + k], 0); /* no overlap */
				got[y * n + x + k] = 1;
				dark_got++;
			}
			d += used;
		}
		assert_int_equal(dark_got, dark_ref);
		assert_memory_equal(got, ref, (size_t)n * (size_t)n);
		free(got);
		free(svg);
		free(ref);
	}
}

static void test_gray_matches_reference(void **state)
{
	(void)state;
	int n;
	unsigned char *ref = reference(PAIR_URI, &n);
	unsigned char *px = NULL;
	int side = 0;
	sovmesh_error err = {0};
	assert_int_equal(qr_render_gray(PAIR_URI, 3, &px, &side, &err), 0);
	assert_int_equal(side, n * 3);
	for (int y = 0; y < side; y++)
		for (int x = 0; x < side; x++)
			assert_int_equal(px[y * side + x], ref[(y / 3) * n + x / 3] ? 0 : 255);
	free(px);
	free(ref);
}

static void test_render_refusals(void **state)
{
	(void)state;
	char *big = malloc(QR_MAX_INPUT + 2);
	assert_non_null(big);
	memset(big, 'a', QR_MAX_INPUT + 1);
	big[QR_MAX_INPUT + 1] = '\0';
	char *out = (char *)1;
	sovmesh_error err = {0};
	assert_int_equal(qr_render_text(big, &out, &err), -E2BIG);
	assert_null(out);
	assert_non_null(strstr(err.message, "the limit is 2048"));
	assert_int_equal(qr_render_svg("", &out, &err), -EINVAL);
	assert_string_equal(err.message, "QR code data is empty");
	assert_int_equal(qr_render_png(SHORT, tmp_path("x.png"), 0, &err), -EINVAL);
	assert_non_null(strstr(err.message, "scale 0 is out of range"));
	assert_int_equal(qr_render_png(SHORT, tmp_path("x.png"), QR_MAX_SCALE + 1, &err), -EINVAL);
	assert_int_equal(access(tmp_path("x.png"), F_OK), -1);
	/* Exactly at the limit still renders (version 40 holds it). */
	big[QR_MAX_INPUT] = '\0';
	assert_int_equal(qr_render_svg(big, &out, &err), 0);
	free(out);
	/* A directory that does not exist: the path is in the message. */
	assert_true(qr_render_png(SHORT, "/nonexistent-dir/qr.png", 4, &err) < 0);
	assert_non_null(strstr(err.message, "/nonexistent-dir/qr.png"));
	free(big);
}

/* ---- round trips ------------------------------------------------------- */

static void test_png_roundtrip(void **state)
{
	(void)state;
	/* The third: raw UTF-8 must come back byte for byte (zbar's binary
	 * mode, no guessing at encodings). */
	const char *inputs[] = {PAIR_URI, SHORT, "K\u00fcche \u2615 \u5bb6"};
	const int scales[] = {1, 8};
	for (size_t i = 0; i < 3; i++) {
		for (size_t s = 0; s < 2; s++) {
			const char *path = tmp_path("qr.png");
			sovmesh_error err = {0};
			assert_int_equal(qr_render_png(inputs[i], path, scales[s], &err), 0);
			struct stat st;
			assert_int_equal(stat(path, &st), 0);
			assert_int_equal(st.st_mode & 0777, 0600);
			/* 8-bit grayscale, (size + quiet zone) * scale square. */
			int n;
			free(reference(inputs[i], &n));
			size_t flen;
			unsigned char *f = read_file(path, &flen);
			assert_true(flen > 33);
			assert_memory_equal(f + 12, "IHDR", 4);
			assert_int_equal((f[16] << 24) | (f[17] << 16) | (f[18] << 8) | f[19],
			                 n * scales[s]);
			assert_int_equal(f[24], 8);
			assert_int_equal(f[25], PNG_COLOR_TYPE_GRAY);
			free(f);
			char *text = NULL;
			int r = qr_scan_file(path, &text, &err);
			if (r != 0)
				fail_msg("scale %d: %s", scales[s], err.message);
			assert_string_equal(text, inputs[i]);
			free(text);
		}
	}
}

static void test_png_formats(void **state)
{
	(void)state;
	unsigned char *px;
	int side;
	sovmesh_error err = {0};
	assert_int_equal(qr_render_gray(PAIR_URI, 3, &px, &side, &err), 0);
	for (int v = PV_GRAY8_ADAM7; v <= PV_PALETTE1; v++) {
		size_t len;
		unsigned char *png = write_png_variant(px, side, (enum png_variant)v, &len);
		char *text = NULL;
		int r = qr_scan_memory(png, len, "variant", &text, &err);
		if (r != 0)
			fail_msg("PNG variant %d: %s", v, err.message);
		assert_string_equal(text, PAIR_URI);
		free(text);
		free(png);
	}
	free(px);
}

static void test_jpeg_roundtrip(void **state)
{
	(void)state;
	const char *inputs[] = {PAIR_URI, SHORT};
	for (size_t i = 0; i < 2; i++) {
		unsigned char *px;
		int side;
		sovmesh_error err = {0};
		assert_int_equal(qr_render_gray(inputs[i], 8, &px, &side, &err), 0);
		size_t len;
		unsigned char *jpg = write_jpeg(px, side, 0, 0, &len);
		const char *path = tmp_path("qr.jpg");
		write_file(path, jpg, len);
		char *text = NULL;
		int r = qr_scan_file(path, &text, &err);
		if (r != 0)
			fail_msg("%s", err.message);
		assert_string_equal(text, inputs[i]);
		free(text);
		free(jpg);
		/* Colour (YCbCr) and progressive files too. */
		jpg = write_jpeg(px, side, 1, 1, &len);
		expect_scan_memory(jpg, len, inputs[i]);
		free(jpg);
		free(px);
	}
}

/* ---- refusals ---------------------------------------------------------- */

static uint32_t crc32_of(const unsigned char *p, size_t n)
{
	uint32_t c = 0xffffffffu;
	for (size_t i = 0; i < n; i++) {
		c ^= p[i];
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
	}
	return ~c;
}

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

static void test_refusals(void **state)
{
	(void)state;
	sovmesh_error err = {0};
	char path[160];

	snprintf(path, sizeof(path), "%s", tmp_path("missing.png"));
	expect_refused(path, -ENOENT, ": cannot open: No such file or directory");

	snprintf(path, sizeof(path), "%s", tmp_path("empty.png"));
	write_file(path, "", 0);
	expect_refused(path, -EINVAL, ": the file is empty");

	snprintf(path, sizeof(path), "%s", tmp_path("notes.txt"));
	const char *txt = "sovmesh://pair?v=1 is not an image\n";
	write_file(path, txt, strlen(txt));
	expect_refused(path, -EINVAL, ": not a PNG or JPEG image");

	expect_refused(tmpdir, -EINVAL, ": not a regular file");

	/* Truncated PNG: half of a real one. */
	unsigned char *png;
	size_t plen;
	assert_int_equal(qr_render_png_memory(PAIR_URI, 4, &png, &plen, &err), 0);
	snprintf(path, sizeof(path), "%s", tmp_path("cut.png"));
	write_file(path, png, plen / 2);
	expect_refused(path, -EBADMSG, ": PNG image is truncated");
	/* Damaged image data (a bit flipped inside IDAT, CRC then wrong). */
	png[plen / 2] ^= 0x10;
	snprintf(path, sizeof(path), "%s", tmp_path("bad.png"));
	write_file(path, png, plen);
	expect_refused(path, -EBADMSG, ": bad PNG image: ");
	free(png);

	/* Truncated JPEG. */
	unsigned char *px;
	int side;
	assert_int_equal(qr_render_gray(PAIR_URI, 4, &px, &side, &err), 0);
	size_t jlen;
	unsigned char *jpg = write_jpeg(px, side, 0, 0, &jlen);
	snprintf(path, sizeof(path), "%s", tmp_path("cut.jpg"));
	write_file(path, jpg, jlen / 2);
	expect_refused(path, -EBADMSG, ": JPEG image is truncated");
	write_file(path, jpg, 40);
	expect_refused(path, -EBADMSG, ": JPEG image is truncated");

	/* A JPEG declaring 65000x65000 (the SOF0 frame header patched). */
	size_t k;
	for (k = 2; k + 9 < jlen; k++)
		if (jpg[k] == 0xff && jpg[k + 1] == 0xc0)
			break;
	assert_true(k + 9 < jlen);
	jpg[k + 5] = jpg[k + 7] = 0xfd; /* height, width = 0xfde8 */
	jpg[k + 6] = jpg[k + 8] = 0xe8;
	snprintf(path, sizeof(path), "%s", tmp_path("huge.jpg"));
	write_file(path, jpg, jlen);
	expect_refused(path, -EFBIG, ": image is 65000x65000 pixels; the limit is 67108864 pixels");
	free(jpg);

	/* A valid PNG without a QR code. */
	memset(px, 255, (size_t)side * (size_t)side);
	for (int y = 10; y < 30; y++)
		memset(px + y * side + 10, 0, 20);
	size_t blen;
	unsigned char *blank = write_png_variant(px, side, PV_GRAY1, &blen);
	snprintf(path, sizeof(path), "%s", tmp_path("blank.png"));
	write_file(path, blank, blen);
	expect_refused(path, -ENODATA, ": no QR code found in the image");
	free(blank);
	free(px);

	/* A PNG header declaring 10000x10000 (each side within libpng's own
	 * limit, the product not within ours), with a valid CRC. */
	unsigned char hdr[8 + 25] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
	put32(hdr + 8, 13);
	memcpy(hdr + 12, "IHDR", 4);
	put32(hdr + 16, 10000);
	put32(hdr + 20, 10000);
	hdr[24] = 8; /* depth; colour type, compression, filter, interlace 0 */
	put32(hdr + 29, crc32_of(hdr + 12, 17));
	snprintf(path, sizeof(path), "%s", tmp_path("huge.png"));
	write_file(path, hdr, sizeof(hdr));
	expect_refused(path, -EFBIG, ": image is 10000x10000 pixels; the limit is 67108864 pixels");
	/* The same header within the limit goes on to libpng, which finds
	 * the missing image data. */
	put32(hdr + 16, 100);
	put32(hdr + 20, 100);
	put32(hdr + 29, crc32_of(hdr + 12, 17));
	write_file(path, hdr, sizeof(hdr));
	expect_refused(path, -EBADMSG, ": PNG image is truncated");
}

/* Arbitrary prefixes and byte flips of real images: refused or decoded,
 * never a crash (the fuzz target goes further). */
static void test_mutations(void **state)
{
	(void)state;
	unsigned char *png;
	size_t plen;
	sovmesh_error err = {0};
	assert_int_equal(qr_render_png_memory(SHORT, 2, &png, &plen, &err), 0);
	for (size_t cut = 0; cut <= plen; cut += 7) {
		char *text = NULL;
		int r = qr_scan_memory(png, cut, NULL, &text, &err);
		if (r == 0) {
			assert_string_equal(text, SHORT);
			free(text);
		} else {
			assert_null(text);
			assert_memory_equal(err.message, "image: ", 7);
		}
	}
	free(png);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_text),
	    cmocka_unit_test(test_svg),
	    cmocka_unit_test(test_gray_matches_reference),
	    cmocka_unit_test(test_render_refusals),
	    cmocka_unit_test(test_png_roundtrip),
	    cmocka_unit_test(test_png_formats),
	    cmocka_unit_test(test_jpeg_roundtrip),
	    cmocka_unit_test(test_refusals),
	    cmocka_unit_test(test_mutations),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
