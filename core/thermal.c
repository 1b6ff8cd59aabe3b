/* This device's thermal state from sysfs (see thermal.h). */
#include "thermal.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The first line of a small sysfs file; 0 on success. */
static int read_line(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return -1;
	char *ok = fgets(buf, (int)len, f);
	fclose(f);
	return ok ? 0 : -1;
}

void thermal_read(const char *sysfs_root, double limit_c, thermal_state *out)
{
	memset(out, 0, sizeof(*out));
	char path[4096], line[64];
	snprintf(path, sizeof(path), "%s/class/thermal", sysfs_root);
	DIR *d = opendir(path);
	if (d) {
		struct dirent *e;
		while ((e = readdir(d))) {
			if (strncmp(e->d_name, "thermal_zone", 12) != 0)
				continue;
			snprintf(path, sizeof(path), "%s/class/thermal/%s/temp", sysfs_root,
			         e->d_name);
			if (read_line(path, line, sizeof(line)) < 0)
				continue;
			char *end = NULL;
			long milli = strtol(line, &end, 10);
			/* Plausible readings only: -50 .. 200 degrees. */
			if (end == line || milli < -50000 || milli > 200000)
				continue;
			double c = (double)milli / 1000.0;
			if (!out->has_temp || c > out->temp_c)
				out->temp_c = c;
			out->has_temp = 1;
		}
		closedir(d);
	}
	snprintf(path, sizeof(path), "%s/devices/platform/soc/soc:firmware/get_throttled",
	         sysfs_root);
	if (read_line(path, line, sizeof(line)) == 0) {
		unsigned long flags = strtoul(line, NULL, 16);
		out->throttled = (flags & 0x4ul) || (flags & 0x8ul);
	}
	out->hot = out->throttled || (out->has_temp && out->temp_c >= limit_c);
}
