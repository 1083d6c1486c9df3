// The counter-based RNG lives with the kernels so the CPU and the GPU draw the same numbers.
#pragma once

#include "specd/counter_rng.h"
