/*
 * The Settings → Network page's files (web/), compiled in at build time by
 * tools/embed_text.py (web/meson.build); served by front_door.c.
 */
#ifndef SOVMESH_CORE_WEB_ASSETS_H
#define SOVMESH_CORE_WEB_ASSETS_H

extern const char web_network_html[];
extern const char web_network_css[];
extern const char web_network_js[];

#endif
