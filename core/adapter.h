/*
 * PEFT LoRA adapter directories: adapter_model.safetensors plus
 * adapter_config.json.
 */
#ifndef SOVMESH_CORE_ADAPTER_H
#define SOVMESH_CORE_ADAPTER_H

#include <sovmesh/plugin.h>

#define ADAPTER_WEIGHTS_FILE "adapter_model.safetensors"
#define ADAPTER_CONFIG_FILE "adapter_config.json"

/* Read <dir>/adapter_model.safetensors (mmap) after checking
 * <dir>/adapter_config.json is a JSON object.  If `config_json` is
 * non-NULL it receives the config text (malloc'd, caller frees). */
int adapter_read(const char *dir, sovmesh_tensor_set **out, char **config_json,
                 sovmesh_error *err);

/* Create `dir` (0700) if needed and write both files atomically.
 * config_json NULL: a minimal LoRA config is written. */
int adapter_write(const char *dir, const sovmesh_tensor_set *set, const char *config_json,
                  sovmesh_error *err);

/*
 * Load a tensor set from a path that is either a .safetensors file or an
 * adapter directory (the offline tools accept both).
 */
int adapter_load_path(const char *path, sovmesh_tensor_set **out, sovmesh_error *err);

#endif
