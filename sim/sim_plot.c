/* sovmesh-sim's SVG line plot (see sim_plot.h). */
#include "sim_plot.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* Canvas and plot area, in SVG user units. */
#define W         760
#define H         460
#define LEFT      70
#define RIGHT     200 /* room for the legend */
#define TOP       56
#define BOTTOM    56
#define PLOT_W    (W - LEFT - RIGHT)
#define PLOT_H    (H - TOP - BOTTOM)
#define LABEL_MAX 28 /* legend labels are cut to this many bytes */

/* Matplotlib's tab10: distinct, and readable by most colour-blind eyes. */
static const char *const colours[] = {
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
};
#define N_COLOURS (sizeof(colours) / sizeof(colours[0]))

/* Length of the valid UTF-8 sequence at s, or 0. */
static size_t utf8_len(const unsigned char *s)
{
	size_t n = s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 ? 2 : 0;
	if (s[0] >= 0xf8)
		return 0;
	for (size_t i = 1; i < n; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	return n;
}

/* Text content or attribute value: XML-escaped, control characters and
 * invalid UTF-8 as '?', at most `max` bytes of input (0: all). */
static void put_text(FILE *f, const char *text, size_t max)
{
	const unsigned char *s = (const unsigned char *)text;
	size_t i = 0;
	while (s[i] && (!max || i < max)) {
		unsigned char c = s[i];
		if (c >= 0x80) {
			size_t n = utf8_len(s + i);
			if (n == 0 || (max && i + n > max)) {
				fputc('?', f);
				i++;
			} else {
				fwrite(s + i, 1, n, f);
				i += n;
			}
			continue;
		}
		switch (c) {
		case '&':
			fputs("&amp;", f);
			break;
		case '<':
			fputs("&lt;", f);
			break;
		case '>':
			fputs("&gt;", f);
			break;
		case '"':
			fputs("&quot;", f);
			break;
		case '\'':
			fputs("&apos;", f);
			break;
		default:
			fputc(c < 0x20 || c == 0x7f ? '?' : c, f);
		}
		i++;
	}
	if (max && s[i])
		fputs("…", f);
}

/* A step of 1, 2 or 5 x 10^k giving at most ~10 ticks over [0, span]. */
static double nice_step(double span)
{
	double raw = span / 10, p = pow(10, floor(log10(raw)));
	double step = p;
	if (step < raw)
		step = 2 * p;
	if (step < raw)
		step = 5 * p;
	if (step < raw)
		step = 10 * p;
	return step < 1 ? 1 : step;
}

int sim_plot_svg(const char *path, const char *title, const char *subtitle,
                 const sim_plot_series *series, size_t n_series, sovmesh_error *err)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return sovmesh_fail(err, -errno, "cannot write %s: %s", path, strerror(errno));

	size_t x_max = 1;
	for (size_t i = 0; i < n_series; i++)
		if (series[i].n > x_max + 1)
			x_max = series[i].n - 1;
#define PX(x) (LEFT + (double)(x) / (double)x_max * PLOT_W)
#define PY(y) (TOP + (1 - (y)) * PLOT_H)

	/* A long legend makes the canvas taller; the plot stays put. */
	size_t h = H;
	if (TOP + 20 * n_series + 24 > h)
		h = TOP + 20 * n_series + 24;
	fprintf(f,
	        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	        "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"%d\" "
	        "height=\"%zu\" viewBox=\"0 0 %d %zu\" font-family=\"sans-serif\" "
	        "font-size=\"12\">\n",
	        W, h, W, h);
	fprintf(f, "<rect width=\"%d\" height=\"%zu\" fill=\"#ffffff\"/>\n", W, h);
	fputs("<text id=\"title\" x=\"", f);
	fprintf(f, "%d\" y=\"24\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\">",
	        LEFT + PLOT_W / 2);
	put_text(f, title ? title : "", 0);
	fputs("</text>\n", f);
	if (subtitle) {
		fprintf(f, "<text x=\"%d\" y=\"42\" text-anchor=\"middle\" fill=\"#555555\">",
		        LEFT + PLOT_W / 2);
		put_text(f, subtitle, 0);
		fputs("</text>\n", f);
	}

	/* Grid and ticks: accuracy every 0.1, rounds every nice step. */
	fputs("<g id=\"axes\" stroke=\"#000000\" stroke-width=\"1\">\n", f);
	for (int t = 0; t <= 10; t++) {
		double y = PY(t / 10.0);
		fprintf(f,
		        "<line x1=\"%d\" y1=\"%.2f\" x2=\"%d\" y2=\"%.2f\" stroke=\"#e0e0e0\"/>\n",
		        LEFT, y, LEFT + PLOT_W, y);
		fprintf(f, "<line x1=\"%d\" y1=\"%.2f\" x2=\"%d\" y2=\"%.2f\"/>\n", LEFT - 5, y,
		        LEFT, y);
		fprintf(
		    f,
		    "<text x=\"%d\" y=\"%.2f\" text-anchor=\"end\" stroke=\"none\">%.1f</text>\n",
		    LEFT - 8, y + 4, t / 10.0);
	}
	double step = nice_step((double)x_max);
	for (double x = 0; x <= (double)x_max + 1e-9; x += step) {
		double px = PX(x);
		fprintf(f,
		        "<line x1=\"%.2f\" y1=\"%d\" x2=\"%.2f\" y2=\"%d\" stroke=\"#e0e0e0\"/>\n",
		        px, TOP, px, TOP + PLOT_H);
		fprintf(f, "<line x1=\"%.2f\" y1=\"%d\" x2=\"%.2f\" y2=\"%d\"/>\n", px,
		        TOP + PLOT_H, px, TOP + PLOT_H + 5);
		fprintf(f,
		        "<text x=\"%.2f\" y=\"%d\" text-anchor=\"middle\" stroke=\"none\">%.0f"
		        "</text>\n",
		        px, TOP + PLOT_H + 19, x);
	}
	/* The axes themselves, over the grid. */
	fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\"/>\n", LEFT, TOP + PLOT_H,
	        LEFT + PLOT_W, TOP + PLOT_H);
	fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\"/>\n", LEFT, TOP, LEFT,
	        TOP + PLOT_H);
	fputs("</g>\n", f);
	fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">round</text>\n",
	        LEFT + PLOT_W / 2, H - 14);
	fprintf(f,
	        "<text x=\"18\" y=\"%d\" text-anchor=\"middle\" transform=\"rotate(-90 18 "
	        "%d)\">test accuracy</text>\n",
	        TOP + PLOT_H / 2, TOP + PLOT_H / 2);

	/* One polyline per run (the only polylines in the file). */
	fputs("<g id=\"runs\" fill=\"none\" stroke-width=\"2\" stroke-linejoin=\"round\">\n", f);
	for (size_t i = 0; i < n_series; i++) {
		fprintf(f, "<polyline stroke=\"%s\"%s data-run=\"", colours[i % N_COLOURS],
		        i >= N_COLOURS ? " stroke-dasharray=\"6 3\"" : "");
		put_text(f, series[i].label, 0);
		fputs("\" points=\"", f);
		const char *sep = "";
		for (size_t j = 0; j < series[i].n; j++) {
			double y = series[i].y[j];
			if (!isfinite(y))
				continue;
			y = y < 0 ? 0 : y > 1 ? 1 : y;
			fprintf(f, "%s%.2f,%.2f", sep, PX(j), PY(y));
			sep = " ";
		}
		fputs("\"><title>", f);
		put_text(f, series[i].label, 0);
		fputs("</title></polyline>\n", f);
	}
	fputs("</g>\n", f);

	/* The legend, right of the plot area. */
	int lx = LEFT + PLOT_W + 16, ly = TOP + 4;
	fprintf(f,
	        "<g id=\"legend\">\n<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%zu\" "
	        "fill=\"#ffffff\" stroke=\"#bbbbbb\"/>\n",
	        lx - 8, ly - 4, RIGHT - 24, 20 * n_series + 8);
	for (size_t i = 0; i < n_series; i++) {
		double y = ly + 10 + 20.0 * (double)i;
		fprintf(f,
		        "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"%s\" "
		        "stroke-width=\"2\"%s/>\n",
		        lx, y, lx + 24, y, colours[i % N_COLOURS],
		        i >= N_COLOURS ? " stroke-dasharray=\"6 3\"" : "");
		fprintf(f, "<text x=\"%d\" y=\"%.1f\">", lx + 30, y + 4);
		put_text(f, series[i].label, LABEL_MAX);
		fputs("</text>\n", f);
	}
	fputs("</g>\n</svg>\n", f);
#undef PX
#undef PY

	int bad = ferror(f);
	if (fclose(f) != 0 || bad)
		return sovmesh_fail(err, -EIO, "cannot write %s: %s", path,
		                    errno ? strerror(errno) : "write error");
	return 0;
}
