/*
 * This device's thermal state, from sysfs: the hottest
 * <root>/class/thermal/thermal_zone<N>/temp (millidegrees Celsius), and on a
 * Raspberry Pi the firmware's throttling flags
 * (<root>/devices/platform/soc/soc:firmware/get_throttled, hex; bit 2 =
 * throttled now, bit 3 = soft temperature limit now).  The root is
 * configurable (mesh.thermal_sysfs_root) so tests can fake a hot device.
 * Health checks report it to peers; the router (mesh inference) skips a
 * hot node.
 */
#ifndef SOVMESH_CORE_THERMAL_H
#define SOVMESH_CORE_THERMAL_H

typedef struct thermal_state {
	int has_temp;  /* 0 when no thermal zone could be read */
	double temp_c; /* hottest zone */
	int throttled; /* the Pi firmware reports throttling now */
	int hot;       /* temp_c >= limit, or throttled */
} thermal_state;

/* Read the state now (a few small sysfs reads; loop thread is fine).
 * Unreadable or malformed files are skipped. */
void thermal_read(const char *sysfs_root, double limit_c, thermal_state *out);

#endif
