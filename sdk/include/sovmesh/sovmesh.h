/* SPDX-License-Identifier: MIT */
/* sovmesh plugin SDK — everything at once. */
#ifndef SOVMESH_SOVMESH_H
#define SOVMESH_SOVMESH_H

#include "plugin.h"
#include "tensor.h"
#include "discovery.h"
#include "backend.h"
#include "cache.h"
#include "aggregator.h"
#include "noise.h"
#include "trainer.h"

#endif
