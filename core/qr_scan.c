/* Decoding a QR code from a PNG or JPEG image (qr_scan.h). */
#include "qr_scan.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
#include <zbar.h>

/* Progressive JPEGs may repeat scans without end, each costing a pass over
 * the whole image; real files have about ten. */
#define MAX_JPEG_SCANS 256
/* libjpeg's whole-image buffers (progressive and multi-scan files). */
#define MAX_JPEG_MEMORY (512L * 1024 * 1024)

/*
 * Decoder state.  libpng and libjpeg report errors by longjmp, so
 * everything a decoder allocates or changes after its setjmp lives here,
 * in the caller's frame, never in the jumping function's own locals
 * (those would be indeterminate afterwards).  The caller frees it all.
 */
typedef struct scan_ctx {
	const char *label;
	const unsigned char *in;
	size_t in_len, in_pos;
	unsigned width, height;
	unsigned char *gray; /* width*height, the result */
	unsigned char *raw;  /* PNG rows as decoded (gray or gray+alpha) */
	png_bytep *rows;
	int code;      /* error code for msg, when not the default */
	char msg[256]; /* what the library said */
	/* JPEG */
	struct jpeg_decompress_struct jd;
	struct jpeg_progress_mgr progress;
	struct jpeg_error_mgr jerr;
	jmp_buf jump;
	int jd_created;
} scan_ctx;

static int fail_too_large(scan_ctx *c, sovmesh_error *err)
{
	return sovmesh_fail(err, -EFBIG, "%s: image is %ux%u pixels; the limit is %u pixels",
	                    c->label, c->width, c->height, (unsigned)QR_SCAN_MAX_PIXELS);
}

static int too_many_pixels(unsigned w, unsigned h)
{
	return (uint64_t)w * h > QR_SCAN_MAX_PIXELS;
}

/* ---- PNG ---------------------------------------------------------------- */

static void on_png_error(png_structp png, png_const_charp msg)
{
	scan_ctx *c = png_get_error_ptr(png);
	if (!c->msg[0])
		snprintf(c->msg, sizeof(c->msg), "%s", msg);
	png_longjmp(png, 1);
}

static void on_png_warning(png_structp png, png_const_charp msg)
{
	/* Damage that libpng can skip (a bad ancillary chunk) is not ours to
	 * report; a damaged code shows up as "no QR code found". */
	(void)png;
	(void)msg;
}

static void on_png_read(png_structp png, png_bytep out, size_t n)
{
	scan_ctx *c = png_get_io_ptr(png);
	if (n > c->in_len - c->in_pos) {
		c->code = -EBADMSG;
		snprintf(c->msg, sizeof(c->msg), "PNG image is truncated");
		png_error(png, c->msg);
	}
	memcpy(out, c->in + c->in_pos, n);
	c->in_pos += n;
}

/* Decode into c->raw (8-bit gray, or gray+alpha when *channels is 2).
 * 0 or -errno; a message in c->msg unless -EFBIG. */
static int png_decode(scan_ctx *c, int *channels)
{
	/* Text and colour-profile chunks can be compressed bombs of their own
	 * and tell us nothing about the pixels: skip them unread. */
	static const png_byte skip[] = "iCCP\0iTXt\0sPLT\0tEXt\0zTXt";
	png_structp png =
	    png_create_read_struct(PNG_LIBPNG_VER_STRING, c, on_png_error, on_png_warning);
	if (!png)
		return -ENOMEM;
	png_infop info = png_create_info_struct(png);
	if (!info) {
		png_destroy_read_struct(&png, NULL, NULL);
		return -ENOMEM;
	}
	if (setjmp(png_jmpbuf(png))) {
		png_destroy_read_struct(&png, &info, NULL);
		return c->code ? c->code : -EBADMSG;
	}
	png_set_read_fn(png, c, on_png_read);
	png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, skip, 5);
	png_read_info(png, info);
	png_uint_32 w, h;
	int depth, type, interlace;
	png_get_IHDR(png, info, &w, &h, &depth, &type, &interlace, NULL, NULL);
	c->width = w;
	c->height = h;
	if (too_many_pixels(w, h)) {
		png_destroy_read_struct(&png, &info, NULL);
		return -EFBIG;
	}
	/* Whatever the file holds, have libpng hand over 8-bit gray, with an
	 * alpha channel when the file has transparency. */
	if (type == PNG_COLOR_TYPE_PALETTE)
		png_set_palette_to_rgb(png);
	if (type == PNG_COLOR_TYPE_GRAY && depth < 8)
		png_set_expand_gray_1_2_4_to_8(png);
	if (png_get_valid(png, info, PNG_INFO_tRNS))
		png_set_tRNS_to_alpha(png);
	if (depth == 16)
		png_set_scale_16(png);
	if (type & PNG_COLOR_MASK_COLOR)
		png_set_rgb_to_gray_fixed(png, PNG_ERROR_ACTION_NONE, -1, -1);
	(void)png_set_interlace_handling(png);
	png_read_update_info(png, info);
	int ch = png_get_channels(png, info);
	size_t rowbytes = png_get_rowbytes(png, info);
	if (png_get_bit_depth(png, info) != 8 || (ch != 1 && ch != 2) ||
	    rowbytes != (size_t)w * (size_t)ch)
		png_error(png, "unexpected pixel layout after conversion to gray");
	/* Zeroed, so rows a damaged stream leaves unwritten read as black. */
	c->raw = calloc((size_t)h, rowbytes);
	c->rows = malloc((size_t)h * sizeof(*c->rows));
	if (!c->raw || !c->rows) {
		c->code = -ENOMEM;
		png_error(png, "out of memory");
	}
	for (size_t y = 0; y < h; y++)
		c->rows[y] = c->raw + y * rowbytes;
	png_read_image(png, c->rows);
	png_destroy_read_struct(&png, &info, NULL);
	*channels = ch;
	return 0;
}

static uint32_t be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int scan_png(scan_ctx *c, sovmesh_error *err)
{
	/* IHDR must come first (signature, length, "IHDR", width, height):
	 * refuse a huge image before libpng reads anything further. */
	if (c->in_len >= 24 && !memcmp(c->in + 12, "IHDR", 4)) {
		c->width = be32(c->in + 16);
		c->height = be32(c->in + 20);
		if (too_many_pixels(c->width, c->height))
			return fail_too_large(c, err);
	}
	int channels = 0;
	int r = png_decode(c, &channels);
	if (r == -EFBIG)
		return fail_too_large(c, err);
	if (r == -ENOMEM)
		return sovmesh_fail(err, r, "%s: out of memory decoding the PNG image", c->label);
	if (r < 0) {
		if (c->code == -EBADMSG && !strcmp(c->msg, "PNG image is truncated"))
			return sovmesh_fail(err, r, "%s: PNG image is truncated", c->label);
		return sovmesh_fail(err, r, "%s: bad PNG image: %s", c->label, c->msg);
	}
	size_t n = (size_t)c->width * c->height;
	if (channels == 1) {
		c->gray = c->raw;
		c->raw = NULL;
		return 0;
	}
	c->gray = malloc(n ? n : 1);
	if (!c->gray)
		return sovmesh_fail(err, -ENOMEM, "%s: out of memory decoding the PNG image",
		                    c->label);
	/* Composite onto white: screenshots often have a transparent
	 * background behind dark modules. */
	for (size_t i = 0; i < n; i++) {
		unsigned g = c->raw[2 * i], a = c->raw[2 * i + 1];
		c->gray[i] = (unsigned char)((g * a + 255u * (255u - a) + 127u) / 255u);
	}
	return 0;
}

/* ---- JPEG --------------------------------------------------------------- */

static scan_ctx *jpeg_ctx(j_common_ptr cinfo)
{
	return (scan_ctx *)((char *)cinfo->err - offsetof(scan_ctx, jerr));
}

static void on_jpeg_error(j_common_ptr cinfo)
{
	scan_ctx *c = jpeg_ctx(cinfo);
	char buf[JMSG_LENGTH_MAX];
	cinfo->err->format_message(cinfo, buf);
	snprintf(c->msg, sizeof(c->msg), "%s", buf);
	longjmp(c->jump, 1);
}

static void on_jpeg_message(j_common_ptr cinfo, int level)
{
	/* The memory source inserts a fake end-of-image at the end of the data
	 * and warns; a cut-off file is an error here, not a grey image. */
	if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
		scan_ctx *c = jpeg_ctx(cinfo);
		c->code = -EBADMSG;
		snprintf(c->msg, sizeof(c->msg), "JPEG image is truncated");
		longjmp(c->jump, 1);
	}
	/* Other warnings (corrupt data, extraneous bytes) and trace output:
	 * decoding goes on; a damaged code shows up as "no QR code found". */
}

static void on_jpeg_progress(j_common_ptr cinfo)
{
	struct jpeg_decompress_struct *jd = (struct jpeg_decompress_struct *)cinfo;
	if (jd->input_scan_number > MAX_JPEG_SCANS) {
		scan_ctx *c = jpeg_ctx(cinfo);
		snprintf(c->msg, sizeof(c->msg), "more than %d scans", MAX_JPEG_SCANS);
		longjmp(c->jump, 1);
	}
}

/* Decode into c->gray.  0 or -errno; a message in c->msg unless -EFBIG. */
static int jpeg_decode(scan_ctx *c)
{
	c->jd.err = jpeg_std_error(&c->jerr);
	c->jerr.error_exit = on_jpeg_error;
	c->jerr.emit_message = on_jpeg_message;
	if (setjmp(c->jump)) {
		if (c->jd_created)
			jpeg_destroy_decompress(&c->jd);
		c->jd_created = 0;
		return c->code ? c->code : -EBADMSG;
	}
	jpeg_create_decompress(&c->jd);
	c->jd_created = 1;
	c->jd.mem->max_memory_to_use = MAX_JPEG_MEMORY;
	c->progress.progress_monitor = on_jpeg_progress;
	c->jd.progress = &c->progress;
	jpeg_mem_src(&c->jd, c->in, (unsigned long)c->in_len);
	if (jpeg_read_header(&c->jd, TRUE) != JPEG_HEADER_OK) {
		snprintf(c->msg, sizeof(c->msg), "no image in the JPEG data");
		longjmp(c->jump, 1);
	}
	c->width = c->jd.image_width;
	c->height = c->jd.image_height;
	if (too_many_pixels(c->width, c->height)) {
		c->code = -EFBIG;
		longjmp(c->jump, 1);
	}
	/* libjpeg drops the chroma itself: only luminance is decoded. */
	c->jd.out_color_space = JCS_GRAYSCALE;
	jpeg_start_decompress(&c->jd);
	if (c->jd.output_components != 1 || c->jd.output_width != c->width ||
	    c->jd.output_height != c->height) {
		snprintf(c->msg, sizeof(c->msg), "unexpected output after conversion to gray");
		longjmp(c->jump, 1);
	}
	c->gray = malloc((size_t)c->width * c->height);
	if (!c->gray) {
		c->code = -ENOMEM;
		snprintf(c->msg, sizeof(c->msg), "out of memory");
		longjmp(c->jump, 1);
	}
	while (c->jd.output_scanline < c->height) {
		JSAMPROW row = c->gray + (size_t)c->jd.output_scanline * c->width;
		if (jpeg_read_scanlines(&c->jd, &row, 1) != 1) {
			snprintf(c->msg, sizeof(c->msg), "decoder stopped early");
			longjmp(c->jump, 1);
		}
	}
	/* Not jpeg_finish_decompress(): what follows the pixels is of no use. */
	jpeg_destroy_decompress(&c->jd);
	c->jd_created = 0;
	return 0;
}

static int scan_jpeg(scan_ctx *c, sovmesh_error *err)
{
	int r = jpeg_decode(c);
	if (r == -EFBIG)
		return fail_too_large(c, err);
	if (r == -ENOMEM)
		return sovmesh_fail(err, r, "%s: out of memory decoding the JPEG image", c->label);
	if (r < 0) {
		if (!strcmp(c->msg, "JPEG image is truncated"))
			return sovmesh_fail(err, r, "%s: JPEG image is truncated", c->label);
		return sovmesh_fail(err, r, "%s: bad JPEG image: %s", c->label, c->msg);
	}
	return 0;
}

/* ---- zbar --------------------------------------------------------------- */

/* Scan w x h gray pixels (borrowed).  0 with *text, -ENODATA when no QR
 * code is there (no message), other -errno with a message. */
static int zbar_scan(scan_ctx *c, const unsigned char *gray, unsigned w, unsigned h, char **text,
                     sovmesh_error *err)
{
	zbar_image_scanner_t *scanner = zbar_image_scanner_create();
	zbar_image_t *img = zbar_image_create();
	int r = -ENODATA;
	if (!scanner || !img) {
		r = sovmesh_fail(err, -ENOMEM, "%s: out of memory scanning the image", c->label);
		goto out;
	}
	zbar_image_scanner_set_config(scanner, 0, ZBAR_CFG_ENABLE, 0);
	zbar_image_scanner_set_config(scanner, ZBAR_QRCODE, ZBAR_CFG_ENABLE, 1);
	/* The raw bytes, not zbar's guess at a text encoding. */
	zbar_image_scanner_set_config(scanner, ZBAR_QRCODE, ZBAR_CFG_BINARY, 1);
	zbar_image_set_format(img, zbar_fourcc('Y', '8', '0', '0'));
	zbar_image_set_size(img, w, h);
	/* No cleanup handler: zbar borrows the pixels and never frees them. */
	zbar_image_set_data(img, gray, (unsigned long)w * h, NULL);
	if (zbar_scan_image(scanner, img) < 0) {
		r = sovmesh_fail(err, -EIO, "%s: the QR code scanner failed", c->label);
		goto out;
	}
	for (const zbar_symbol_t *s = zbar_image_first_symbol(img); s; s = zbar_symbol_next(s)) {
		if (zbar_symbol_get_type(s) != ZBAR_QRCODE)
			continue;
		const char *data = zbar_symbol_get_data(s);
		size_t len = zbar_symbol_get_data_length(s);
		if (!data || memchr(data, '\0', len)) {
			r = sovmesh_fail(err, -EBADMSG,
			                 "%s: the QR code holds binary data, not text", c->label);
			goto out;
		}
		*text = strndup(data, len);
		r = *text ? 0 : sovmesh_fail(err, -ENOMEM, "%s: out of memory", c->label);
		goto out;
	}
out:
	if (img)
		zbar_image_destroy(img);
	if (scanner)
		zbar_image_scanner_destroy(scanner);
	return r;
}

static int find_qr(scan_ctx *c, char **text, sovmesh_error *err)
{
	int r = zbar_scan(c, c->gray, c->width, c->height, text, err);
	/* zbar misses codes drawn with one pixel per module (a small PNG, a
	 * screenshot at 100 %): look again at a small image doubled. */
	if (r == -ENODATA && c->width <= 1024 && c->height <= 1024) {
		unsigned w = 2 * c->width, h = 2 * c->height;
		unsigned char *big = malloc((size_t)w * h);
		if (!big)
			return sovmesh_fail(err, -ENOMEM, "%s: out of memory scanning the image",
			                    c->label);
		for (unsigned y = 0; y < h; y++)
			for (unsigned x = 0; x < w; x++)
				big[(size_t)y * w + x] =
				    c->gray[(size_t)(y / 2) * c->width + x / 2];
		r = zbar_scan(c, big, w, h, text, err);
		free(big);
	}
	if (r == -ENODATA)
		return sovmesh_fail(err, r, "%s: no QR code found in the image", c->label);
	return r;
}

/* ---- entry points ------------------------------------------------------- */

int qr_scan_memory(const void *buf, size_t len, const char *label, char **text, sovmesh_error *err)
{
	static const unsigned char png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
	static const unsigned char jpeg_magic[3] = {0xff, 0xd8, 0xff};
	*text = NULL;
	if (!label)
		label = "image";
	if (len == 0)
		return sovmesh_fail(err, -EINVAL, "%s: the file is empty", label);
	if (len > QR_SCAN_MAX_FILE)
		return sovmesh_fail(err, -EFBIG, "%s: image is %zu bytes; the limit is %u MiB",
		                    label, len, QR_SCAN_MAX_FILE / (1024u * 1024u));
	scan_ctx *c = calloc(1, sizeof(*c));
	if (!c)
		return sovmesh_fail(err, -ENOMEM, "%s: out of memory", label);
	c->label = label;
	c->in = buf;
	c->in_len = len;
	int r;
	if (len >= sizeof(png_magic) && !memcmp(buf, png_magic, sizeof(png_magic)))
		r = scan_png(c, err);
	else if (len >= sizeof(jpeg_magic) && !memcmp(buf, jpeg_magic, sizeof(jpeg_magic)))
		r = scan_jpeg(c, err);
	else
		r = sovmesh_fail(err, -EINVAL, "%s: not a PNG or JPEG image", label);
	if (r == 0)
		r = find_qr(c, text, err);
	free(c->gray);
	free(c->raw);
	free(c->rows);
	free(c);
	return r;
}

int qr_scan_file(const char *path, char **text, sovmesh_error *err)
{
	*text = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		return sovmesh_fail(err, -e, "%s: cannot open: %s", path, strerror(e));
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = errno;
		close(fd);
		return sovmesh_fail(err, -e, "%s: cannot stat: %s", path, strerror(e));
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return sovmesh_fail(err, -EINVAL, "%s: not a regular file", path);
	}
	if (st.st_size == 0) {
		close(fd);
		return sovmesh_fail(err, -EINVAL, "%s: the file is empty", path);
	}
	if ((uintmax_t)st.st_size > QR_SCAN_MAX_FILE) {
		close(fd);
		return sovmesh_fail(err, -EFBIG, "%s: file is %jd bytes; the limit is %u MiB", path,
		                    (intmax_t)st.st_size, QR_SCAN_MAX_FILE / (1024u * 1024u));
	}
	size_t size = (size_t)st.st_size, got = 0;
	unsigned char *buf = malloc(size);
	if (!buf) {
		close(fd);
		return sovmesh_fail(err, -ENOMEM, "%s: out of memory", path);
	}
	/* The file may shrink while we read; what was read is what we scan. */
	while (got < size) {
		ssize_t n = read(fd, buf + got, size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = errno;
			free(buf);
			close(fd);
			return sovmesh_fail(err, -e, "%s: cannot read: %s", path, strerror(e));
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	int r = qr_scan_memory(buf, got, path, text, err);
	free(buf);
	return r;
}
