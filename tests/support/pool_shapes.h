// The pooling shapes that the CPU tests (tests/kernels/pool.cpp) and the
// CUDA twin tests (tests/gpu/pool.cpp) both run: odd sizes, strides below,
// at and above the window, padding up to half the window, windows that end
// short of the last rows and columns, the window as the whole input, an
// empty batch.
#pragma once

#include <vector>

#include "kernels/pool.h"

namespace tandem::testing {

inline const std::vector<kernels::Pool2dShape> kPoolShapes = {
    {.N = 3, .C = 5, .H = 7, .W = 3, .R = 3, .S = 2, .stride_h = 2, .stride_w = 1, .pad_h = 1, .pad_w = 1},
    {.N = 2, .C = 3, .H = 8, .W = 8, .R = 2, .S = 2, .stride_h = 2, .stride_w = 2},
    {.N = 1, .C = 2, .H = 5, .W = 6, .R = 3, .S = 3, .stride_h = 1, .stride_w = 1, .pad_h = 1, .pad_w = 1},
    {.N = 2, .C = 1, .H = 7, .W = 5, .R = 4, .S = 3, .stride_h = 3, .stride_w = 2, .pad_h = 2, .pad_w = 1},
    {.N = 1, .C = 1, .H = 1, .W = 1, .R = 1, .S = 1, .stride_h = 1, .stride_w = 1},
    {.N = 3, .C = 2, .H = 6, .W = 7, .R = 3, .S = 3, .stride_h = 2, .stride_w = 2},
    {.N = 0, .C = 2, .H = 4, .W = 4, .R = 2, .S = 2, .stride_h = 2, .stride_w = 2, .pad_h = 1, .pad_w = 1},
    {.N = 1, .C = 3, .H = 9, .W = 11, .R = 5, .S = 3, .stride_h = 4, .stride_w = 3, .pad_h = 2, .pad_w = 1},
    {.N = 1, .C = 1, .H = 4, .W = 5, .R = 4, .S = 5, .stride_h = 1, .stride_w = 1},
    {.N = 1, .C = 2, .H = 5, .W = 1, .R = 2, .S = 1, .stride_h = 1, .stride_w = 1, .pad_h = 1},
};

}  // namespace tandem::testing
