/*
 * sovmesh-sim's plot: test accuracy against round, one line per run, as a
 * plain hand-written SVG 1.1 file (no dependencies): axes with ticks and
 * grid, a title, axis labels, and a legend to the right of the plot.
 */
#ifndef SOVMESH_SIM_PLOT_H
#define SOVMESH_SIM_PLOT_H

#include <stddef.h>
#include <sovmesh/plugin.h>

typedef struct sim_plot_series {
	const char *label;
	const double *y; /* y[i] at x = i, in [0, 1]; non-finite points are left out */
	size_t n;
} sim_plot_series;

/*
 * Write the plot to `path`.  `title` and `subtitle` (may be NULL) are
 * escaped; runs beyond the 10 colours repeat them dashed.  0 or -errno
 * with a message naming the file.
 */
int sim_plot_svg(const char *path, const char *title, const char *subtitle,
                 const sim_plot_series *series, size_t n_series, sovmesh_error *err);

#endif
