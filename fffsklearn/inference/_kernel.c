/*
 * Hard-routed inference of a fast feedforward network on the CPU.
 *
 * hard_forward(arrays, X, leaves_out, outputs_out, n_threads)
 *   arrays      an fffsklearn.FFFArrays (float32, C-contiguous weights, validated again here)
 *   X           2-D float32 or float64 buffer of shape (n, d), any strides
 *   leaves_out  1-D int64 buffer of length n, written with each row's leaf
 *   outputs_out 2-D float32 buffer of shape (n, o), or None to route only
 *
 * hard_forward_csr(arrays, data, indices, indptr, n_features, leaves_out, outputs_out,
 *                  n_threads)
 *   The same for the rows of a CSR matrix (scipy's three arrays: float32 or float64 values,
 *   int32 or int64 columns and row pointers; columns in any order, repeats summed), at a cost
 *   per row that grows with its non-zeros rather than with d.
 *
 * Rows are processed in blocks, handed to OpenMP threads as they free up, with the GIL released
 * (dynamic scheduling: a thread that shares its core with another library's spinning workers,
 * OpenBLAS's after a matrix product for instance, takes fewer blocks instead of holding up
 * the call).
 * Within a block: (1) each row walks the tree, its node logits accumulated in double from the
 * float32 row, exactly the reference's rule (right iff logit > 0); (2) rows are grouped by
 * leaf and each group runs through its leaf with a register-tiled loop that reads every
 * weight once for four rows; (3) the master leaf runs the same loop over the whole block.
 * Nothing a row computes depends on the other rows of its batch.
 */
#include "../_kernel_common.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* process_block is compiled once for each instruction set (see _kernel_common.h), and run()
 * calls the widest one this CPU supports, unless use_instruction_set chose a narrower one
 * (the tests compare them). The compute helpers are inlined into each instance. */
#define INLINE FFF_INLINE

/* The depth limit and the activations come from the Python modules that define them for
 * every part of the package (fffsklearn/_limits.py, fffsklearn/_activations.py); setup.py
 * passes them. A model's activation code is the position of its name in FFF_ACTIVATIONS. */
#if !defined(FFF_MAX_DEPTH) || !defined(FFF_ACTIVATIONS)
#error "build the kernel through setup.py, which defines FFF_MAX_DEPTH and FFF_ACTIVATIONS"
#endif
#define MAX_DEPTH FFF_MAX_DEPTH
static const char *const activation_names[] = {FFF_ACTIVATIONS};
#define N_ACTIVATIONS ((int)(sizeof activation_names / sizeof activation_names[0]))
#define MIN_BLOCK_ROWS 512
#define MAX_BLOCK_ROWS 2048
#define MIN_THREAD_ROWS 256       /* rows a thread gets at the least when the input is shared */
#define ROWS_PER_LEAF 32          /* a block's rows per leaf that its weights are read for */
#define MAX_CONVERTED_BYTES (8 << 20) /* float32 copies of a block's rows, per thread */
#define TILE_ROWS 4
#define TILE_COLS 16 /* widest column tile of hidden_layer: two vectors of 8 lanes */

enum activation {
    ACT_RELU = FFF_ACT_RELU,
    ACT_TANH = FFF_ACT_TANH,
    ACT_LOGISTIC = FFF_ACT_LOGISTIC,
    ACT_IDENTITY = FFF_ACT_IDENTITY
};

typedef struct {
    int depth;
    enum activation activation;
    Py_ssize_t n_features, n_outputs, leaf_width, master_width;
    const float *node_w, *node_b;
    const float *leaf_w1, *leaf_b1, *leaf_w2, *leaf_b2;
    const float *master_w1, *master_b1, *master_w2, *master_b2;
} model_t;

typedef struct {
    const char *data;
    Py_ssize_t n_rows, stride_row, stride_col; /* strides in bytes; unused for CSR rows */
    int is_double;
    /* CSR rows: data holds the stored values, indices their columns and indptr[r] the first
     * entry of row r (indptr[r + 1] the end); index_size and pointer_size are 4 or 8 bytes.
     * indices is NULL for a dense input. */
    const char *indices, *indptr;
    int index_size, pointer_size;
} input_t;

/* ------------------------------------------------------------------------------------------ */
/* Buffer checks                                                                              */

/* Views kept alive for the duration of one call. */
typedef struct {
    Py_buffer views[12];
    int count;
} views_t;

static void release_views(views_t *v) {
    for (int i = 0; i < v->count; i++) PyBuffer_Release(&v->views[i]);
    v->count = 0;
}

/* Get a C-contiguous float32 buffer of exactly the given shape from attribute `name`. */
static const float *float32_attribute(PyObject *arrays, const char *name, int ndim,
                                      const Py_ssize_t *shape, views_t *views) {
    PyObject *obj = PyObject_GetAttrString(arrays, name);
    if (obj == NULL) return NULL;
    Py_buffer *view = &views->views[views->count];
    int rc = PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT);
    Py_DECREF(obj);
    if (rc < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "Corrupt FFF model: %s is not a C-contiguous array.", name);
        return NULL;
    }
    views->count++;
    if (fff_item_format(view) != 'f' || view->itemsize != 4) {
        PyErr_Format(PyExc_ValueError, "Corrupt FFF model: %s must be float32.", name);
        return NULL;
    }
    int ok = view->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = view->shape[i] == shape[i];
    if (!ok) {
        PyErr_Format(PyExc_ValueError,
                     "Corrupt FFF model: %s has a shape inconsistent with the model's depth "
                     "and sizes.", name);
        return NULL;
    }
    return (const float *)view->buf;
}

static int read_model(PyObject *arrays, model_t *m, views_t *views) {
    PyObject *depth_obj = PyObject_GetAttrString(arrays, "depth");
    if (depth_obj == NULL) return -1;
    long depth = PyLong_AsLong(depth_obj);
    Py_DECREF(depth_obj);
    if (depth == -1 && PyErr_Occurred()) return -1;
    if (depth < 0 || depth > MAX_DEPTH) {
        PyErr_Format(PyExc_ValueError, "Corrupt FFF model: depth %ld is outside [0, %d].",
                     depth, MAX_DEPTH);
        return -1;
    }
    m->depth = (int)depth;

    PyObject *act = PyObject_GetAttrString(arrays, "activation");
    if (act == NULL) return -1;
    const char *act_name = PyUnicode_Check(act) ? PyUnicode_AsUTF8(act) : NULL;
    int code = -1;
    for (int i = 0; act_name != NULL && i < N_ACTIVATIONS; i++) {
        if (strcmp(act_name, activation_names[i]) == 0) code = i;
    }
    Py_DECREF(act);
    int found = 0;
    switch (code) { /* a name this file has no case for is refused, never run as another */
        case ACT_RELU: case ACT_TANH: case ACT_LOGISTIC: case ACT_IDENTITY:
            m->activation = (enum activation)code;
            found = 1;
            break;
        default: break;
    }
    if (!found) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "Corrupt FFF model: unknown activation.");
        return -1;
    }

    /* The sizes come from the biases; every weight's shape is then checked against them. */
    Py_buffer probe;
    const char *size_sources[3] = {"leaf_hidden_biases", "master_hidden_biases",
                                   "master_output_biases"};
    Py_ssize_t sizes[3];
    for (int i = 0; i < 3; i++) {
        PyObject *obj = PyObject_GetAttrString(arrays, size_sources[i]);
        if (obj == NULL) return -1;
        int rc = PyObject_GetBuffer(obj, &probe, PyBUF_STRIDES);
        Py_DECREF(obj);
        if (rc < 0) return -1;
        sizes[i] = probe.ndim >= 1 ? probe.shape[probe.ndim - 1] : -1;
        PyBuffer_Release(&probe);
    }
    PyObject *obj = PyObject_GetAttrString(arrays, "node_weights");
    if (obj == NULL) return -1;
    int rc = PyObject_GetBuffer(obj, &probe, PyBUF_STRIDES);
    Py_DECREF(obj);
    if (rc < 0) return -1;
    m->n_features = probe.ndim == 2 ? probe.shape[1] : -1;
    PyBuffer_Release(&probe);
    m->leaf_width = sizes[0];
    m->master_width = sizes[1];
    m->n_outputs = sizes[2];
    if (m->n_features < 1 || m->leaf_width < 1 || m->master_width < 0 || m->n_outputs < 1) {
        PyErr_SetString(PyExc_ValueError, "Corrupt FFF model: array sizes are inconsistent.");
        return -1;
    }

    Py_ssize_t n_nodes = ((Py_ssize_t)1 << m->depth) - 1, n_leaves = n_nodes + 1;
    Py_ssize_t d = m->n_features, l = m->leaf_width, mw = m->master_width, o = m->n_outputs;
    Py_ssize_t s_node_w[2] = {n_nodes, d}, s_node_b[1] = {n_nodes};
    Py_ssize_t s_leaf_w1[3] = {n_leaves, d, l}, s_leaf_b1[2] = {n_leaves, l};
    Py_ssize_t s_leaf_w2[3] = {n_leaves, l, o}, s_leaf_b2[2] = {n_leaves, o};
    Py_ssize_t s_m_w1[2] = {d, mw}, s_m_b1[1] = {mw}, s_m_w2[2] = {mw, o}, s_m_b2[1] = {o};
    if (!(m->node_w = float32_attribute(arrays, "node_weights", 2, s_node_w, views)) ||
        !(m->node_b = float32_attribute(arrays, "node_biases", 1, s_node_b, views)) ||
        !(m->leaf_w1 = float32_attribute(arrays, "leaf_hidden_weights", 3, s_leaf_w1, views)) ||
        !(m->leaf_b1 = float32_attribute(arrays, "leaf_hidden_biases", 2, s_leaf_b1, views)) ||
        !(m->leaf_w2 = float32_attribute(arrays, "leaf_output_weights", 3, s_leaf_w2, views)) ||
        !(m->leaf_b2 = float32_attribute(arrays, "leaf_output_biases", 2, s_leaf_b2, views)) ||
        !(m->master_w1 = float32_attribute(arrays, "master_hidden_weights", 2, s_m_w1, views)) ||
        !(m->master_b1 = float32_attribute(arrays, "master_hidden_biases", 1, s_m_b1, views)) ||
        !(m->master_w2 = float32_attribute(arrays, "master_output_weights", 2, s_m_w2, views)) ||
        !(m->master_b2 = float32_attribute(arrays, "master_output_biases", 1, s_m_b2, views)))
        return -1;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Compute                                                                                    */

INLINE float activate(float h, enum activation a) {
    switch (a) {
        case ACT_RELU: return h > 0.0f ? h : 0.0f;
        case ACT_TANH: return tanhf(h);
        case ACT_LOGISTIC: return 1.0f / (1.0f + expf(-h));
        case ACT_IDENTITY: default: return h;
    }
}

/* Row r of the input as float32: the caller's memory when it already is contiguous float32,
 * else converted into `scratch` (one cast, one block at a time). */
INLINE const float *input_row(const input_t *in, Py_ssize_t r, Py_ssize_t d, float *scratch) {
    const char *row = in->data + r * in->stride_row;
    if (!in->is_double && in->stride_col == (Py_ssize_t)sizeof(float)) return (const float *)row;
    for (Py_ssize_t k = 0; k < d; k++) {
        const char *p = row + k * in->stride_col;
        scratch[k] = in->is_double ? (float)*(const double *)p : *(const float *)p;
    }
    return scratch;
}

/* GCC vector types. The float code is written once for vectors of LANES floats and defined
 * for the native width of each instance of process_block: 8 lanes (AVX registers) in the AVX2
 * instance, 4 (SSE or NEON registers) in the baseline one. Wider-than-native vectors would
 * also compile, but GCC then multiplies a scalar by a vector through the stack. The double code (routing's exact path and norms) multiplies vectors only. */
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef double v4d __attribute__((vector_size(32)));

#define VLOAD(VEC, p) ({ VEC v_; memcpy(&v_, (p), sizeof v_); v_; })
#define VSTORE(p, v) do { __typeof__(v) v_ = (v); memcpy((p), &v_, sizeof v_); } while (0)
INLINE v4d load4d(const double *p) { return VLOAD(v4d, p); }
INLINE v4d load4_as_double(const float *p) { return __builtin_convertvector(VLOAD(v4f, p), v4d); }

INLINE void widen_row(const float *x, Py_ssize_t d, double *out) {
    for (Py_ssize_t k = 0; k < d; k++) out[k] = (double)x[k];
}

/* Exact-enough logit of one float32 row at one node: the row widened to double (once per
 * row), products exact in double, four independent accumulators in a fixed order. This is the
 * reference's arithmetic up to summation order, i.e. within about d * 2^-53 * sum|w_k x_k|. */
INLINE double node_logit_double(const double *x, const float *w, Py_ssize_t d) {
    v4d acc0 = {0}, acc1 = {0}, acc2 = {0}, acc3 = {0};
    Py_ssize_t k = 0;
    for (; k + 16 <= d; k += 16) {
        acc0 += load4d(x + k) * load4_as_double(w + k);
        acc1 += load4d(x + k + 4) * load4_as_double(w + k + 4);
        acc2 += load4d(x + k + 8) * load4_as_double(w + k + 8);
        acc3 += load4d(x + k + 12) * load4_as_double(w + k + 12);
    }
    v4d acc = (acc0 + acc1) + (acc2 + acc3);
    double total = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (; k < d; k++) total += x[k] * (double)w[k];
    return total;
}

/* Fast float32 logits of four rows at their four nodes, with vectors of LANES floats. Each
 * row's sum is a dependent chain; running four rows side by side, two vectors each, overlaps
 * their latencies. */
#define DEFINE_NODE_LOGITS(VEC, LANES)                                                          \
    INLINE void node_logits##LANES(const float *const *x, const float *const *w, Py_ssize_t d, \
                                   float *logits) {                                            \
        VEC a0 = {0}, b0 = {0}, a1 = {0}, b1 = {0}, a2 = {0}, b2 = {0}, a3 = {0}, b3 = {0};     \
        Py_ssize_t k = 0;                                                                      \
        for (; k + 2 * LANES <= d; k += 2 * LANES) {                                           \
            a0 += VLOAD(VEC, x[0] + k) * VLOAD(VEC, w[0] + k);                                 \
            b0 += VLOAD(VEC, x[0] + k + LANES) * VLOAD(VEC, w[0] + k + LANES);                 \
            a1 += VLOAD(VEC, x[1] + k) * VLOAD(VEC, w[1] + k);                                 \
            b1 += VLOAD(VEC, x[1] + k + LANES) * VLOAD(VEC, w[1] + k + LANES);                 \
            a2 += VLOAD(VEC, x[2] + k) * VLOAD(VEC, w[2] + k);                                 \
            b2 += VLOAD(VEC, x[2] + k + LANES) * VLOAD(VEC, w[2] + k + LANES);                 \
            a3 += VLOAD(VEC, x[3] + k) * VLOAD(VEC, w[3] + k);                                 \
            b3 += VLOAD(VEC, x[3] + k + LANES) * VLOAD(VEC, w[3] + k + LANES);                 \
        }                                                                                      \
        if (k + LANES <= d) {                                                                  \
            a0 += VLOAD(VEC, x[0] + k) * VLOAD(VEC, w[0] + k);                                 \
            a1 += VLOAD(VEC, x[1] + k) * VLOAD(VEC, w[1] + k);                                 \
            a2 += VLOAD(VEC, x[2] + k) * VLOAD(VEC, w[2] + k);                                 \
            a3 += VLOAD(VEC, x[3] + k) * VLOAD(VEC, w[3] + k);                                 \
            k += LANES;                                                                        \
        }                                                                                      \
        VEC sums[TILE_ROWS] = {a0 + b0, a1 + b1, a2 + b2, a3 + b3};                            \
        for (int r = 0; r < TILE_ROWS; r++) {                                                  \
            float total = 0.0f;                                                                \
            for (int j = 0; j < LANES; j++) total += sums[r][j];                               \
            for (Py_ssize_t j = k; j < d; j++) total += x[r][j] * w[r][j];                     \
            logits[r] = total;                                                                 \
        }                                                                                      \
    }
DEFINE_NODE_LOGITS(v8f, 8)
DEFINE_NODE_LOGITS(v4f, 4)

/* In double: squares of float32 values neither overflow nor underflow there. */
INLINE double euclidean_norm(const float *v, Py_ssize_t d) {
    v4d acc0 = {0}, acc1 = {0}, acc2 = {0}, acc3 = {0};
    Py_ssize_t k = 0;
    for (; k + 16 <= d; k += 16) {
        v4d a = load4_as_double(v + k), b = load4_as_double(v + k + 4);
        v4d c = load4_as_double(v + k + 8), e = load4_as_double(v + k + 12);
        acc0 += a * a;
        acc1 += b * b;
        acc2 += c * c;
        acc3 += e * e;
    }
    for (; k + 4 <= d; k += 4) {
        v4d a = load4_as_double(v + k);
        acc0 += a * a;
    }
    v4d acc = (acc0 + acc1) + (acc2 + acc3);
    double sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (; k < d; k++) sum += (double)v[k] * (double)v[k];
    return sqrt(sum);
}

/* hidden[r][j0 + j] = act(tile[r][j] + b[j0 + j]) for the tile's real rows. */
INLINE void finish_tile(float tile[TILE_ROWS][TILE_COLS], int n_rows, Py_ssize_t cols,
                        const float *b, Py_ssize_t j0, Py_ssize_t width, enum activation act,
                        float *hidden) {
    for (int r = 0; r < n_rows; r++)
        for (Py_ssize_t j = 0; j < cols; j++)
            hidden[r * width + j0 + j] = activate(tile[r][j] + b[j0 + j], act);
}

/* One stage of hidden_layer, with vectors of LANES floats: from column j0, columns 2 * LANES
 * at a time with four rows times two vectors of accumulators, so each weight vector loaded
 * serves four rows; then LANES columns with the inputs split into even and odd positions, so
 * eight independent sums still hide the latency of the multiply-adds. Returns the first column
 * it leaves to a narrower stage. */
#define DEFINE_HIDDEN_STAGE(VEC, LANES)                                                         \
    INLINE Py_ssize_t hidden_stage##LANES(const float *const *x, int n_rows, Py_ssize_t d,     \
                                          const float *W, const float *b, Py_ssize_t width,   \
                                          Py_ssize_t j0, enum activation act, float *hidden) {\
        const float *x0 = x[0], *x1 = x[1], *x2 = x[2], *x3 = x[3];                            \
        float tile[TILE_ROWS][TILE_COLS];                                                      \
        for (; j0 + 2 * LANES <= width; j0 += 2 * LANES) {                                     \
            VEC a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0};                                    \
            VEC a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0};                                    \
            for (Py_ssize_t k = 0; k < d; k++) {                                               \
                const float *w = W + k * width + j0;                                           \
                VEC w0 = VLOAD(VEC, w), w1 = VLOAD(VEC, w + LANES);                            \
                a00 += x0[k] * w0; a01 += x0[k] * w1;                                          \
                a10 += x1[k] * w0; a11 += x1[k] * w1;                                          \
                a20 += x2[k] * w0; a21 += x2[k] * w1;                                          \
                a30 += x3[k] * w0; a31 += x3[k] * w1;                                          \
            }                                                                                  \
            VSTORE(tile[0], a00); VSTORE(tile[0] + LANES, a01);                                \
            VSTORE(tile[1], a10); VSTORE(tile[1] + LANES, a11);                                \
            VSTORE(tile[2], a20); VSTORE(tile[2] + LANES, a21);                                \
            VSTORE(tile[3], a30); VSTORE(tile[3] + LANES, a31);                                \
            finish_tile(tile, n_rows, 2 * LANES, b, j0, width, act, hidden);                   \
        }                                                                                      \
        if (j0 + LANES <= width) {                                                             \
            VEC e0 = {0}, e1 = {0}, e2 = {0}, e3 = {0}, o0 = {0}, o1 = {0}, o2 = {0}, o3 = {0}; \
            Py_ssize_t k = 0;                                                                  \
            for (; k + 2 <= d; k += 2) {                                                       \
                VEC we = VLOAD(VEC, W + k * width + j0);                                       \
                VEC wo = VLOAD(VEC, W + (k + 1) * width + j0);                                 \
                e0 += x0[k] * we; e1 += x1[k] * we; e2 += x2[k] * we; e3 += x3[k] * we;        \
                o0 += x0[k + 1] * wo; o1 += x1[k + 1] * wo;                                    \
                o2 += x2[k + 1] * wo; o3 += x3[k + 1] * wo;                                    \
            }                                                                                  \
            if (k < d) {                                                                       \
                VEC we = VLOAD(VEC, W + k * width + j0);                                       \
                e0 += x0[k] * we; e1 += x1[k] * we; e2 += x2[k] * we; e3 += x3[k] * we;        \
            }                                                                                  \
            VSTORE(tile[0], e0 + o0); VSTORE(tile[1], e1 + o1);                                \
            VSTORE(tile[2], e2 + o2); VSTORE(tile[3], e3 + o3);                                \
            finish_tile(tile, n_rows, LANES, b, j0, width, act, hidden);                       \
            j0 += LANES;                                                                       \
        }                                                                                      \
        return j0;                                                                             \
    }
DEFINE_HIDDEN_STAGE(v8f, 8)
DEFINE_HIDDEN_STAGE(v4f, 4)

/* hidden[r][0:width] = act(x_r @ W + b) for up to TILE_ROWS rows (a short tile repeats its
 * first row and discards it): the widest stage that `lanes` allows, then narrower ones, then
 * the last (fewer than four) columns one at a time. */
INLINE void hidden_layer(const float *const *rows, int n_rows, Py_ssize_t d, const float *W,
                         const float *b, Py_ssize_t width, enum activation act, float *hidden,
                         int lanes) {
    const float *x[TILE_ROWS];
    for (int r = 0; r < TILE_ROWS; r++) x[r] = rows[r < n_rows ? r : 0];
    Py_ssize_t j0 = 0;
    if (lanes >= 8) j0 = hidden_stage8(x, n_rows, d, W, b, width, j0, act, hidden);
    j0 = hidden_stage4(x, n_rows, d, W, b, width, j0, act, hidden);
    if (j0 < width) {
        float tile[TILE_ROWS][TILE_COLS];
        Py_ssize_t cols = width - j0;
        for (int r = 0; r < TILE_ROWS; r++)
            for (Py_ssize_t j = 0; j < cols; j++) tile[r][j] = 0.0f;
        for (Py_ssize_t k = 0; k < d; k++) {
            const float *w = W + k * width + j0;
            for (int r = 0; r < TILE_ROWS; r++)
                for (Py_ssize_t j = 0; j < cols; j++) tile[r][j] += x[r][k] * w[j];
        }
        finish_tile(tile, n_rows, cols, b, j0, width, act, hidden);
    }
}

/* out[r][0:o] += hidden[r] @ W2 + b2. Each output's sum stays in a register, in two halves
 * (even and odd hidden units) so that its additions overlap; the outputs' sums are
 * independent of each other. */
INLINE void output_layer(const float *hidden, int n_rows, Py_ssize_t width, const float *W2,
                         const float *b2, Py_ssize_t o, float *const *out) {
    for (int r = 0; r < n_rows; r++) {
        const float *h = hidden + r * width;
        float *y = out[r];
        for (Py_ssize_t c = 0; c < o; c++) {
            float even = b2[c], odd = 0.0f;
            Py_ssize_t j = 0;
            for (; j + 2 <= width; j += 2) {
                even += h[j] * W2[j * o + c];
                odd += h[j + 1] * W2[(j + 1) * o + c];
            }
            if (j < width) even += h[j] * W2[j * o + c];
            y[c] += even + odd;
        }
    }
}

typedef struct {
    const float **rows;   /* a block's row pointers */
    float *converted;     /* a block's rows as float32, used only when the input needs a cast */
    int64_t *order;       /* rows of the block sorted by leaf */
    Py_ssize_t *counts;   /* n_leaves + 1 */
    float *hidden;        /* TILE_ROWS * max(leaf_width, master_width) */
    double *wide_row;     /* d doubles: a row whose decision needs the double path */
    double *node_norms;   /* n_nodes Euclidean norms of node weights, computed on first use */
    int saw_non_finite;   /* set when a row holds NaN or infinity (after the cast to float32) */
    int saw_bad_column;   /* set when a CSR row names a column outside [0, d) */
} workspace_t;

static void free_workspace(workspace_t *w) {
    free(w->rows); free(w->converted); free(w->order); free(w->counts); free(w->hidden);
    free(w->wide_row);
    free(w->node_norms);
}

INLINE int input_needs_cast(const input_t *in) {
    return in->indices == NULL && (in->is_double || in->stride_col != (Py_ssize_t)sizeof(float));
}

static int alloc_workspace(workspace_t *w, const model_t *m, const input_t *in,
                           Py_ssize_t block_rows) {
    Py_ssize_t width = m->leaf_width > m->master_width ? m->leaf_width : m->master_width;
    int needs_cast = input_needs_cast(in);
    w->rows = malloc(sizeof(float *) * block_rows);
    w->converted = needs_cast ? malloc(sizeof(float) * block_rows * m->n_features) : NULL;
    w->order = malloc(sizeof(int64_t) * block_rows);
    w->counts = malloc(sizeof(Py_ssize_t) * (((Py_ssize_t)1 << m->depth) + 1));
    w->hidden = malloc(sizeof(float) * TILE_ROWS * width);
    w->wide_row = malloc(sizeof(double) * m->n_features);
    Py_ssize_t n_nodes = ((Py_ssize_t)1 << m->depth) - 1;
    w->node_norms = malloc(sizeof(double) * (n_nodes > 0 ? n_nodes : 1));
    for (Py_ssize_t j = 0; j < n_nodes && w->node_norms; j++) w->node_norms[j] = -1.0;
    w->saw_non_finite = w->saw_bad_column = 0;
    if (!w->rows || (needs_cast && !w->converted) || !w->order || !w->counts || !w->hidden ||
        !w->wide_row || !w->node_norms) {
        free_workspace(w);
        return -1;
    }
    return 0;
}

/* Sum of the squares of a float32 row, in float32, with vectors of LANES floats. */
#define DEFINE_SQUARES(VEC, LANES)                                                              \
    INLINE float squares##LANES(const float *x, Py_ssize_t d) {                                \
        VEC a = {0}, b = {0};                                                                  \
        Py_ssize_t k = 0;                                                                      \
        for (; k + 2 * LANES <= d; k += 2 * LANES) {                                           \
            VEC u = VLOAD(VEC, x + k), v = VLOAD(VEC, x + k + LANES);                          \
            a += u * u;                                                                        \
            b += v * v;                                                                        \
        }                                                                                      \
        a += b;                                                                                \
        float sum = 0.0f;                                                                      \
        for (int j = 0; j < LANES; j++) sum += a[j];                                           \
        for (; k < d; k++) sum += x[k] * x[k];                                                 \
        return sum;                                                                            \
    }
DEFINE_SQUARES(v8f, 8)
DEFINE_SQUARES(v4f, 4)

/* An upper bound of the Euclidean norm of a float32 row from its float32 sum of squares s, a
 * quarter of the work of the float64 norm. As a dot product of d terms in any order, with or
 * without fused multiply-adds, s >= (1 - g) ||x||^2 - 4 n 2^-126 with n = d + 1 and
 * g = n 2^-24 / (1 - n 2^-24) (Higham, "Accuracy and Stability of Numerical Algorithms",
 * 3.1; the second term bounds what underflow loses, flushed to zero or not, over at most 2n
 * operations), so ||x||^2 <= (s + 4 n 2^-126) / (1 - g); the factor 1 + 2^-40 covers rounding
 * that bound in double. When s is not finite (a square overflowed float32, or the row holds
 * NaN or infinity) or the row is too long for the bound, the float64 norm itself is returned:
 * it is finite exactly when the row is. */
INLINE double norm_upper_bound(const float *x, Py_ssize_t d, int lanes) {
    const double n = (double)d + 1.0;
    float s = lanes >= 8 ? squares8(x, d) : squares4(x, d);
    if (!isfinite(s) || n * 0x1p-24 > 0.25) return euclidean_norm(x, d);
    double g = n * 0x1p-24 / (1.0 - n * 0x1p-24);
    return sqrt(((double)s + 4.0 * n * 0x1p-126) / (1.0 - g)) * (1.0 + 0x1p-40);
}

/* Leaves of up to four float32 rows (a short tile repeats its first row and discards it).
 * Routing must match the reference's float64 logits exactly in sign. The float32 logit differs
 * from the exact one by at most about (d + 2) * 2^-24 * sum|w_k x_k| (relative rounding, in
 * any summation order) plus (d + 2) * 2^-149 (subnormal results), and
 * sum|w_k x_k| <= ||w|| ||x|| (Cauchy-Schwarz), where an upper bound of ||x|| may stand
 * (norm_upper_bound). Outside that margin, inflated by half again, its sign is the exact sign
 * and so the reference's; inside it (rare) the row's logit is recomputed in double. */
INLINE void route_tile(const model_t *m, const float *const *rows, int count, workspace_t *w,
                       int64_t *leaves, int lanes) {
    const Py_ssize_t d = m->n_features;
    const double margin_factor = 1.5 * ((double)d + 2.0) * 0x1p-24;
    const double margin_floor = 1.5 * ((double)d + 2.0) * 0x1p-148;
    const float *x[TILE_ROWS], *wn[TILE_ROWS];
    double x_norm[TILE_ROWS];
    Py_ssize_t node[TILE_ROWS] = {0, 0, 0, 0};
    float logits[TILE_ROWS];
    for (int t = 0; t < TILE_ROWS; t++) {
        x[t] = rows[t < count ? t : 0];
        /* The norm doubles as the input's finiteness check: predict needs no separate pass. */
        x_norm[t] = norm_upper_bound(x[t], d, lanes);
        if (!isfinite(x_norm[t])) w->saw_non_finite = 1;
    }
    for (int level = 0; level < m->depth; level++) {
        for (int t = 0; t < TILE_ROWS; t++) {
            wn[t] = m->node_w + node[t] * d;
            if (w->node_norms[node[t]] < 0.0) w->node_norms[node[t]] = euclidean_norm(wn[t], d);
        }
        if (lanes >= 8)
            node_logits8(x, wn, d, logits);
        else
            node_logits4(x, wn, d, logits);
        for (int t = 0; t < TILE_ROWS; t++) {
            double bias = (double)m->node_b[node[t]];
            double logit = (double)logits[t] + bias;
            double margin = margin_factor * w->node_norms[node[t]] * x_norm[t] + margin_floor;
            if (!(fabs(logit) > margin)) { /* also taken for NaN or infinite values */
                widen_row(x[t], d, w->wide_row);
                logit = node_logit_double(w->wide_row, wn[t], d) + bias;
            }
            node[t] = 2 * node[t] + 1 + (logit > 0.0);
        }
    }
    for (int t = 0; t < count; t++) leaves[t] = node[t] - (((Py_ssize_t)1 << m->depth) - 1);
}


/* ------------------------------------------------------------------------------------------ */
/* CSR rows                                                                                   */

INLINE Py_ssize_t csr_pointer(const input_t *in, Py_ssize_t r) {
    return in->pointer_size == 8 ? (Py_ssize_t)((const int64_t *)in->indptr)[r]
                                 : (Py_ssize_t)((const int32_t *)in->indptr)[r];
}

INLINE Py_ssize_t csr_column(const input_t *in, Py_ssize_t i) {
    return in->index_size == 8 ? (Py_ssize_t)((const int64_t *)in->indices)[i]
                               : (Py_ssize_t)((const int32_t *)in->indices)[i];
}

/* Entry i's value as the network reads it: cast to float32, as a dense row is. */
INLINE float csr_value(const input_t *in, Py_ssize_t i) {
    return in->is_double ? (float)((const double *)in->data)[i] : ((const float *)in->data)[i];
}

/* Whether every entry of rows [start, start + n_rows) names a column in [0, d) and holds a
 * finite float32 value; flags the workspace otherwise. Every later pass trusts the rows.
 * Branch-free, so that the compiler vectorises it. */
INLINE int csr_rows_valid(const input_t *in, Py_ssize_t start, Py_ssize_t n_rows, Py_ssize_t d,
                          workspace_t *w) {
    const Py_ssize_t begin = csr_pointer(in, start), end = csr_pointer(in, start + n_rows);
    int bad_column = 0, non_finite = 0;
    for (Py_ssize_t i = begin; i < end; i++) {
        bad_column |= (size_t)csr_column(in, i) >= (size_t)d; /* negative ones wrap above d */
        non_finite |= !(fabsf(csr_value(in, i)) <= FLT_MAX);
    }
    w->saw_bad_column |= bad_column;
    w->saw_non_finite |= non_finite;
    return !w->saw_bad_column && !w->saw_non_finite;
}

/* Leaf of CSR row r: each logit summed in double over the row's entries, products exact, so
 * that its sign is the exact sign up to a rounding of the sum, as the dense path's is. Four
 * partial sums, so that a row's additions do not wait for each other. */
INLINE int64_t csr_route(const model_t *m, const input_t *in, Py_ssize_t r) {
    const Py_ssize_t d = m->n_features, begin = csr_pointer(in, r), end = csr_pointer(in, r + 1);
    Py_ssize_t node = 0;
    for (int level = 0; level < m->depth; level++) {
        const float *wn = m->node_w + node * d;
        double sums[4] = {0.0, 0.0, 0.0, 0.0};
        Py_ssize_t i = begin;
        for (; i + 4 <= end; i += 4)
            for (int t = 0; t < 4; t++)
                sums[t] += (double)csr_value(in, i + t) * (double)wn[csr_column(in, i + t)];
        for (; i < end; i++) sums[0] += (double)csr_value(in, i) * (double)wn[csr_column(in, i)];
        double logit = ((sums[0] + sums[1]) + (sums[2] + sums[3])) + (double)m->node_b[node];
        node = 2 * node + 1 + (logit > 0.0);
    }
    return (int64_t)(node - (((Py_ssize_t)1 << m->depth) - 1));
}

/* hidden[j0:] = act(x_r @ W + b) for CSR row r, from column j0, 2 * LANES columns at a time
 * in registers (one row of W per stored value), the even and odd entries in separate sums so
 * that four chains of multiply-adds overlap; returns the first column it leaves to a
 * narrower stage. */
#define DEFINE_CSR_STAGE(VEC, LANES)                                                            \
    INLINE Py_ssize_t csr_stage##LANES(const input_t *in, Py_ssize_t begin, Py_ssize_t end,    \
                                       const float *W, const float *b, Py_ssize_t width,      \
                                       Py_ssize_t j0, enum activation act, float *hidden) {   \
        float tile[TILE_ROWS][TILE_COLS];                                                      \
        for (; j0 + 2 * LANES <= width; j0 += 2 * LANES) {                                     \
            VEC e0 = {0}, e1 = {0}, o0 = {0}, o1 = {0};                                        \
            Py_ssize_t i = begin;                                                              \
            for (; i + 2 <= end; i += 2) {                                                     \
                const float xe = csr_value(in, i), xo = csr_value(in, i + 1);                  \
                const float *we = W + csr_column(in, i) * width + j0;                          \
                const float *wo = W + csr_column(in, i + 1) * width + j0;                      \
                e0 += xe * VLOAD(VEC, we);                                                     \
                e1 += xe * VLOAD(VEC, we + LANES);                                             \
                o0 += xo * VLOAD(VEC, wo);                                                     \
                o1 += xo * VLOAD(VEC, wo + LANES);                                             \
            }                                                                                  \
            if (i < end) {                                                                     \
                const float x = csr_value(in, i), *w = W + csr_column(in, i) * width + j0;     \
                e0 += x * VLOAD(VEC, w);                                                       \
                e1 += x * VLOAD(VEC, w + LANES);                                               \
            }                                                                                  \
            VSTORE(tile[0], e0 + o0);                                                          \
            VSTORE(tile[0] + LANES, e1 + o1);                                                  \
            finish_tile(tile, 1, 2 * LANES, b, j0, width, act, hidden);                        \
        }                                                                                      \
        return j0;                                                                             \
    }
DEFINE_CSR_STAGE(v8f, 8)
DEFINE_CSR_STAGE(v4f, 4)

/* hidden[0:width] = act(x_r @ W + b) for CSR row r: the widest stage `lanes` allows, then
 * the narrower one, then the last columns one at a time. */
INLINE void csr_hidden_layer(const input_t *in, Py_ssize_t r, const float *W, const float *b,
                             Py_ssize_t width, enum activation act, float *hidden, int lanes) {
    const Py_ssize_t begin = csr_pointer(in, r), end = csr_pointer(in, r + 1);
    Py_ssize_t j0 = 0;
    if (lanes >= 8) j0 = csr_stage8(in, begin, end, W, b, width, j0, act, hidden);
    j0 = csr_stage4(in, begin, end, W, b, width, j0, act, hidden);
    for (Py_ssize_t j = j0; j < width; j++) {
        float sum = 0.0f;
        for (Py_ssize_t i = begin; i < end; i++) sum += csr_value(in, i) * W[csr_column(in, i) * width + j];
        hidden[j] = activate(sum + b[j], act);
    }
}

/* process_block for CSR rows: route each row, run the master leaf on it, then each leaf on
 * its rows, grouped by leaf as in the dense path so a leaf's weights stay in cache. */
INLINE void process_csr_block(const model_t *m, const input_t *in, Py_ssize_t start,
                              Py_ssize_t n_rows, int64_t *leaves, float *outputs,
                              workspace_t *w, int lanes) {
    const Py_ssize_t d = m->n_features, o = m->n_outputs, l = m->leaf_width;
    const Py_ssize_t n_leaves = (Py_ssize_t)1 << m->depth;
    if (!csr_rows_valid(in, start, n_rows, d, w)) return;
    for (Py_ssize_t r = 0; r < n_rows; r++) leaves[start + r] = csr_route(m, in, start + r);
    if (!outputs) return;
    float *block_out = outputs + start * o;
    memset(block_out, 0, sizeof(float) * n_rows * o);
    for (Py_ssize_t r = 0; r < n_rows; r++) {
        float *out_row = block_out + r * o;
        if (m->master_width > 0) {
            csr_hidden_layer(in, start + r, m->master_w1, m->master_b1, m->master_width,
                             m->activation, w->hidden, lanes);
            output_layer(w->hidden, 1, m->master_width, m->master_w2, m->master_b2, o,
                         &out_row);
        } else {
            for (Py_ssize_t c = 0; c < o; c++) out_row[c] += m->master_b2[c];
        }
    }
    memset(w->counts, 0, sizeof(Py_ssize_t) * (n_leaves + 1));
    for (Py_ssize_t r = 0; r < n_rows; r++) w->counts[leaves[start + r] + 1]++;
    for (Py_ssize_t j = 0; j < n_leaves; j++) w->counts[j + 1] += w->counts[j];
    for (Py_ssize_t r = 0; r < n_rows; r++) w->order[w->counts[leaves[start + r]]++] = r;
    for (Py_ssize_t g = 0; g < n_rows; g++) {
        Py_ssize_t r = w->order[g], leaf = leaves[start + r];
        float *out_row = block_out + r * o;
        csr_hidden_layer(in, start + r, m->leaf_w1 + leaf * d * l, m->leaf_b1 + leaf * l, l,
                         m->activation, w->hidden, lanes);
        output_layer(w->hidden, 1, l, m->leaf_w2 + leaf * l * o, m->leaf_b2 + leaf * o, o,
                     &out_row);
    }
}

INLINE void process_block(const model_t *m, const input_t *in, Py_ssize_t start,
                          Py_ssize_t n_rows, int64_t *leaves, float *outputs, workspace_t *w,
                          int lanes) {
    const Py_ssize_t d = m->n_features, o = m->n_outputs, l = m->leaf_width;
    const Py_ssize_t n_leaves = (Py_ssize_t)1 << m->depth;
    if (in->indices) {
        process_csr_block(m, in, start, n_rows, leaves, outputs, w, lanes);
        return;
    }
    float *out_rows[TILE_ROWS];
    const float *tile[TILE_ROWS];
    float *block_out = outputs ? outputs + start * o : NULL;
    if (block_out) memset(block_out, 0, sizeof(float) * n_rows * o);

    /* Route four rows, then run the master leaf on them while they are still in cache. */
    for (Py_ssize_t r = 0; r < n_rows; r += TILE_ROWS) {
        int count = (int)(n_rows - r < TILE_ROWS ? n_rows - r : TILE_ROWS);
        for (int t = 0; t < count; t++) {
            float *scratch = w->converted ? w->converted + (r + t) * d : NULL;
            w->rows[r + t] = input_row(in, start + r + t, d, scratch);
            if (block_out) out_rows[t] = block_out + (r + t) * o;
        }
        route_tile(m, w->rows + r, count, w, leaves + start + r, lanes);
        if (!block_out) continue;
        if (m->master_width > 0) {
            hidden_layer(w->rows + r, count, d, m->master_w1, m->master_b1, m->master_width,
                         m->activation, w->hidden, lanes);
            output_layer(w->hidden, count, m->master_width, m->master_w2, m->master_b2, o,
                         out_rows);
        } else {
            for (int t = 0; t < count; t++)
                for (Py_ssize_t c = 0; c < o; c++) out_rows[t][c] += m->master_b2[c];
        }
    }
    if (!block_out) return;

    /* Counting sort of the block's rows by leaf, so each leaf's weights are read once per
     * tile of rows rather than once per row. counts[j] ends up as the end of leaf j's group,
     * which starts where leaf j-1's ended. */
    memset(w->counts, 0, sizeof(Py_ssize_t) * (n_leaves + 1));
    for (Py_ssize_t r = 0; r < n_rows; r++) w->counts[leaves[start + r] + 1]++;
    for (Py_ssize_t j = 0; j < n_leaves; j++) w->counts[j + 1] += w->counts[j];
    for (Py_ssize_t r = 0; r < n_rows; r++) w->order[w->counts[leaves[start + r]]++] = r;
    Py_ssize_t group_start = 0;
    for (Py_ssize_t j = 0; j < n_leaves && group_start < n_rows; j++) {
        Py_ssize_t group_end = w->counts[j];
        const float *W1 = m->leaf_w1 + j * d * l, *b1 = m->leaf_b1 + j * l;
        const float *W2 = m->leaf_w2 + j * l * o, *b2 = m->leaf_b2 + j * o;
        for (Py_ssize_t g = group_start; g < group_end; g += TILE_ROWS) {
            int count = (int)(group_end - g < TILE_ROWS ? group_end - g : TILE_ROWS);
            for (int t = 0; t < count; t++) {
                tile[t] = w->rows[w->order[g + t]];
                out_rows[t] = block_out + w->order[g + t] * o;
            }
            hidden_layer(tile, count, d, W1, b1, l, m->activation, w->hidden, lanes);
            output_layer(w->hidden, count, l, W2, b2, o, out_rows);
        }
        group_start = group_end;
    }
}

/* The instances of process_block, widest first, each with the float vectors of its width. */
typedef void (*block_fn)(const model_t *, const input_t *, Py_ssize_t, Py_ssize_t, int64_t *,
                         float *, workspace_t *);
#define BLOCK_INSTANCE(name, attributes, lanes)                                                 \
    attributes static void name(const model_t *m, const input_t *in, Py_ssize_t start,        \
                                Py_ssize_t n_rows, int64_t *leaves, float *outputs,           \
                                workspace_t *w) {                                             \
        process_block(m, in, start, n_rows, leaves, outputs, w, lanes);                       \
    }
#ifdef FFF_X86_DISPATCH
BLOCK_INSTANCE(process_block_avx2, FFF_TARGET_AVX2, 8)
#endif
BLOCK_INSTANCE(process_block_baseline, , 4)

typedef struct {
    const char *name;
    block_fn process;
    int supported; /* by this CPU and its operating system; set when the module loads */
} instruction_set_t;

static instruction_set_t instruction_sets[] = {
#ifdef FFF_X86_DISPATCH
    {"avx2", process_block_avx2, 0},
#endif
    {"baseline", process_block_baseline, 1},
};
#define N_INSTRUCTION_SETS ((int)(sizeof instruction_sets / sizeof instruction_sets[0]))
static int selected_set; /* index into instruction_sets; written only with the GIL held */

static void detect_instruction_sets(void) {
#ifdef FFF_X86_DISPATCH
    instruction_sets[0].supported = fff_cpu_has_avx2();
#endif
    selected_set = 0;
    while (!instruction_sets[selected_set].supported) selected_set++;
}

enum { RUN_OK = 0, RUN_NO_MEMORY = 1, RUN_NON_FINITE = 2, RUN_BAD_COLUMN = 4 };

/* Rows per block. Each leaf's weights are read once per block (from beyond the core's cache
 * when the tree is deep), so a large input is cut into blocks that give every leaf about
 * ROWS_PER_LEAF rows: at depth 6, 2048-row blocks read a quarter of the weight bytes a row
 * that 512-row blocks do. That stays within MAX_BLOCK_ROWS and the bytes of float32 copies a
 * thread keeps. A smaller input is still shared among the threads, down to MIN_THREAD_ROWS
 * rows each, and the blocks are evened out so that every thread gets as many. Below that a
 * call runs on the calling thread: waking a thread pool that has gone to sleep costs more
 * than routing a few hundred rows on one thread. */
static Py_ssize_t block_rows(const model_t *m, const input_t *in, int n_threads) {
    Py_ssize_t target = ROWS_PER_LEAF << m->depth;
    if (target < MIN_BLOCK_ROWS) target = MIN_BLOCK_ROWS;
    if (target > MAX_BLOCK_ROWS) target = MAX_BLOCK_ROWS;
    Py_ssize_t copy_limit = MAX_CONVERTED_BYTES / ((Py_ssize_t)sizeof(float) * m->n_features);
    if (input_needs_cast(in) && target > copy_limit)
        target = copy_limit > TILE_ROWS ? copy_limit : TILE_ROWS;
    Py_ssize_t n = in->n_rows > 0 ? in->n_rows : 1;
    Py_ssize_t n_blocks = (n + target - 1) / target;
    Py_ssize_t for_threads = n / MIN_THREAD_ROWS;
    if (for_threads > n_threads) for_threads = n_threads;
    if (n_blocks < for_threads) n_blocks = for_threads;
    if (n_blocks > n_threads && n_blocks % n_threads) n_blocks += n_threads - n_blocks % n_threads;
    return (n + n_blocks - 1) / n_blocks;
}

static int run(const model_t *m, const input_t *in, int64_t *leaves, float *outputs,
               int n_threads, block_fn process) {
    const Py_ssize_t rows_per_block = block_rows(m, in, n_threads);
    Py_ssize_t n_blocks = (in->n_rows + rows_per_block - 1) / rows_per_block;
    if (n_threads > n_blocks) n_threads = (int)(n_blocks > 0 ? n_blocks : 1);
    int failed = RUN_OK;
#pragma omp parallel num_threads(n_threads) if (n_threads > 1) reduction(| : failed)
    {
        workspace_t w;
        if (alloc_workspace(&w, m, in, rows_per_block) < 0) {
            failed = RUN_NO_MEMORY;
        } else {
#pragma omp for schedule(dynamic)
            for (Py_ssize_t b = 0; b < n_blocks; b++) {
                Py_ssize_t start = b * rows_per_block;
                Py_ssize_t rows = in->n_rows - start < rows_per_block ? in->n_rows - start
                                                                      : rows_per_block;
                process(m, in, start, rows, leaves, outputs, &w);
            }
            if (w.saw_non_finite) failed |= RUN_NON_FINITE;
            if (w.saw_bad_column) failed |= RUN_BAD_COLUMN;
            free_workspace(&w);
        }
    }
    return failed;
}

/* ------------------------------------------------------------------------------------------ */
/* Python entry points                                                                        */

/* Run the model over `in` into leaves_obj and outputs_obj (None: route only), and turn what
 * went wrong into the Python exception: the tail both entry points share. */
static PyObject *run_into(const model_t *m, const input_t *in, PyObject *leaves_obj,
                          PyObject *outputs_obj, int n_threads) {
    fff_buffer_t leaves = {.held = 0}, outputs = {.held = 0};
    PyObject *result = NULL;
    if (fff_get_vector(leaves_obj, &leaves, "leaves_out", 'q', 8, in->n_rows, 1) < 0) goto done;
    if (outputs_obj != Py_None &&
        fff_get_matrix(outputs_obj, &outputs, "outputs_out", 'f', 4, in->n_rows, m->n_outputs,
                       1) < 0)
        goto done;

    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = run(m, in, (int64_t *)leaves.view.buf, outputs.held ? (float *)outputs.view.buf : NULL,
             n_threads, instruction_sets[selected_set].process);
    Py_END_ALLOW_THREADS
    if (rc & RUN_NO_MEMORY) {
        PyErr_NoMemory();
        goto done;
    }
    if (rc & RUN_BAD_COLUMN) {
        PyErr_Format(PyExc_ValueError,
                     "Corrupt sparse X: a column index lies outside [0, %zd).", m->n_features);
        goto done;
    }
    if (rc & RUN_NON_FINITE) {
        PyErr_SetString(PyExc_ValueError,
                        "Input X contains NaN, infinity or a value too large for float32.");
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    fff_release(&outputs), fff_release(&leaves);
    return result;
}

static int check_n_threads(int n_threads) {
    if (n_threads >= 1) return 0;
    PyErr_SetString(PyExc_ValueError, "n_threads must be >= 1.");
    return -1;
}

static PyObject *hard_forward(PyObject *self, PyObject *args) {
    PyObject *arrays, *X_obj, *leaves_obj, *outputs_obj;
    int n_threads;
    if (!PyArg_ParseTuple(args, "OOOOi", &arrays, &X_obj, &leaves_obj, &outputs_obj, &n_threads))
        return NULL;
    if (check_n_threads(n_threads) < 0) return NULL;
    views_t views = {.count = 0};
    fff_buffer_t X = {.held = 0};
    model_t m;
    PyObject *result = NULL;

    if (read_model(arrays, &m, &views) < 0) goto done;

    if (PyObject_GetBuffer(X_obj, &X.view, PyBUF_STRIDES | PyBUF_FORMAT) < 0) goto done;
    X.held = 1;
    char fmt = fff_item_format(&X.view);
    if (X.view.ndim != 2 || !((fmt == 'f' && X.view.itemsize == 4) ||
                              (fmt == 'd' && X.view.itemsize == 8))) {
        PyErr_SetString(PyExc_ValueError, "X must be a 2-D float32 or float64 array.");
        goto done;
    }
    if (X.view.shape[1] != m.n_features) {
        PyErr_Format(PyExc_ValueError, "X has %zd features, but the model expects %zd.",
                     X.view.shape[1], m.n_features);
        goto done;
    }
    if (X.view.strides[0] % X.view.itemsize || X.view.strides[1] % X.view.itemsize) {
        PyErr_SetString(PyExc_ValueError, "X strides must be multiples of its item size.");
        goto done;
    }
    input_t in = {.data = X.view.buf, .n_rows = X.view.shape[0], .stride_row = X.view.strides[0],
                  .stride_col = X.view.strides[1], .is_double = fmt == 'd'};
    result = run_into(&m, &in, leaves_obj, outputs_obj, n_threads);
done:
    fff_release(&X);
    release_views(&views);
    return result;
}

/* A C-contiguous 1-D buffer of int32 or int64 items; returns the item size, or -1. */
static int get_index_vector(PyObject *obj, fff_buffer_t *b, const char *name) {
    if (PyObject_GetBuffer(obj, &b->view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    b->held = 1;
    char f = fff_item_format(&b->view);
    if (b->view.ndim == 1 && b->view.itemsize == 4 && f == 'i') return 4;
    if (b->view.ndim == 1 && b->view.itemsize == 8 && fff_format_is(f, 'q')) return 8;
    PyErr_Format(PyExc_ValueError, "%s must be a 1-D int32 or int64 array.", name);
    return -1;
}

/* Whether the row pointers of a CSR matrix of `nnz` stored values are within [0, nnz] and
 * never decrease, so that every row's entries lie inside the buffers. */
static int check_row_pointers(const input_t *in, Py_ssize_t nnz) {
    Py_ssize_t previous = 0;
    for (Py_ssize_t r = 0; r <= in->n_rows; r++) {
        Py_ssize_t pointer = csr_pointer(in, r);
        if (pointer < previous || pointer > nnz) {
            PyErr_SetString(PyExc_ValueError,
                            "Corrupt sparse X: its row pointers must not decrease and must lie "
                            "within its stored values.");
            return -1;
        }
        previous = pointer;
    }
    return 0;
}

static PyObject *hard_forward_csr(PyObject *self, PyObject *args) {
    PyObject *arrays, *data_obj, *indices_obj, *indptr_obj, *leaves_obj, *outputs_obj;
    Py_ssize_t n_features;
    int n_threads;
    if (!PyArg_ParseTuple(args, "OOOOnOOi", &arrays, &data_obj, &indices_obj, &indptr_obj,
                          &n_features, &leaves_obj, &outputs_obj, &n_threads))
        return NULL;
    if (check_n_threads(n_threads) < 0) return NULL;
    views_t views = {.count = 0};
    fff_buffer_t data = {.held = 0}, indices = {.held = 0}, indptr = {.held = 0};
    model_t m;
    PyObject *result = NULL;

    if (read_model(arrays, &m, &views) < 0) goto done;
    if (n_features != m.n_features) {
        PyErr_Format(PyExc_ValueError, "X has %zd features, but the model expects %zd.",
                     n_features, m.n_features);
        goto done;
    }
    if (PyObject_GetBuffer(data_obj, &data.view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        goto done;
    data.held = 1;
    char fmt = fff_item_format(&data.view);
    if (data.view.ndim != 1 || !((fmt == 'f' && data.view.itemsize == 4) ||
                                 (fmt == 'd' && data.view.itemsize == 8))) {
        PyErr_SetString(PyExc_ValueError, "data must be a 1-D float32 or float64 array.");
        goto done;
    }
    int index_size = get_index_vector(indices_obj, &indices, "indices");
    if (index_size < 0) goto done;
    int pointer_size = get_index_vector(indptr_obj, &indptr, "indptr");
    if (pointer_size < 0) goto done;
    Py_ssize_t nnz = data.view.shape[0];
    if (indices.view.shape[0] != nnz || indptr.view.shape[0] < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "Corrupt sparse X: indices must be as long as data, and indptr hold "
                        "at least one pointer.");
        goto done;
    }
    input_t in = {.data = data.view.buf, .n_rows = indptr.view.shape[0] - 1,
                  .is_double = fmt == 'd', .indices = indices.view.buf,
                  .indptr = indptr.view.buf, .index_size = index_size,
                  .pointer_size = pointer_size};
    if (check_row_pointers(&in, nnz) < 0) goto done;
    result = run_into(&m, &in, leaves_obj, outputs_obj, n_threads);
done:
    fff_release(&indptr), fff_release(&indices), fff_release(&data);
    release_views(&views);
    return result;
}

static PyObject *instruction_sets_supported(PyObject *self, PyObject *unused) {
    int count = 0;
    for (int i = 0; i < N_INSTRUCTION_SETS; i++) count += instruction_sets[i].supported;
    PyObject *names = PyTuple_New(count);
    if (names == NULL) return NULL;
    for (int i = 0, j = 0; i < N_INSTRUCTION_SETS; i++) {
        if (!instruction_sets[i].supported) continue;
        PyObject *name = PyUnicode_FromString(instruction_sets[i].name);
        if (name == NULL) {
            Py_DECREF(names);
            return NULL;
        }
        PyTuple_SET_ITEM(names, j++, name);
    }
    return names;
}

static PyObject *use_instruction_set(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    for (int i = 0; i < N_INSTRUCTION_SETS; i++) {
        if (strcmp(name, instruction_sets[i].name) != 0) continue;
        if (!instruction_sets[i].supported) break;
        PyObject *previous = PyUnicode_FromString(instruction_sets[selected_set].name);
        if (previous != NULL) selected_set = i;
        return previous;
    }
    PyObject *supported = instruction_sets_supported(NULL, NULL);
    if (supported != NULL) {
        PyErr_Format(PyExc_ValueError,
                     "Instruction set '%s' is not one this CPU supports; choose one of %R.",
                     name, supported);
        Py_DECREF(supported);
    }
    return NULL;
}

static PyMethodDef methods[] = {
    {"hard_forward", hard_forward, METH_VARARGS,
     "hard_forward(arrays, X, leaves_out, outputs_out, n_threads)\n\n"
     "Route every row of X with hard decisions, write its leaf to leaves_out and, unless\n"
     "outputs_out is None, its raw output (chosen leaf plus master leaf) to outputs_out."},
    {"hard_forward_csr", hard_forward_csr, METH_VARARGS,
     "hard_forward_csr(arrays, data, indices, indptr, n_features, leaves_out, outputs_out,\n"
     "                 n_threads)\n\n"
     "hard_forward for the rows of a CSR matrix given by its three arrays (indptr may be a\n"
     "slice of a larger matrix's: its pointers index data and indices as they are)."},
    {"instruction_sets", instruction_sets_supported, METH_NOARGS,
     "instruction_sets()\n\n"
     "Names of the instruction sets this CPU runs the kernel with, widest (and default) first."},
    {"use_instruction_set", use_instruction_set, METH_VARARGS,
     "use_instruction_set(name)\n\n"
     "Run later calls with the named instruction set (one of instruction_sets()) and return\n"
     "the name of the one used until now. Results agree across instruction sets: leaves\n"
     "exactly, outputs up to float32 rounding."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernel",
                                    "Compiled hard-routed FFF inference.", -1, methods};

PyMODINIT_FUNC PyInit__kernel(void) {
    detect_instruction_sets();
    PyObject *mod = PyModule_Create(&module);
    if (mod == NULL) return NULL;
#ifdef _OPENMP
    if (PyModule_AddIntConstant(mod, "OPENMP", 1) < 0) return NULL;
#else
    if (PyModule_AddIntConstant(mod, "OPENMP", 0) < 0) return NULL;
#endif
    return mod;
}
