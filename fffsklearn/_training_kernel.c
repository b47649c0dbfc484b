/* The CPU training step's own arithmetic, for float32 tensors: the soft routing (the path
 * probabilities of every leaf, each row's hard leaf, and their backward), the layers of
 * each row's hard leaf in the straight-through forward and its backward, and the
 * classifier's loss with its gradient; and the gradient of the penalty that ties the leaves to
 * their subtrees.
 *
 * The torch operations that compute the same (fffsklearn/_network.py, _torch_path_* functions
 * and the dense leaf products) take about thirty small tensor operations per training step,
 * whose dispatch costs more than the arithmetic. Here each direction is one call with one
 * pass over every row. Routing arithmetic is in double,
 * results in float32.
 *
 * A leaf's probability is the product over its path of sigmoid(z) where the path goes right
 * at a node of logit z and sigmoid(-z) where it goes left, in double: one exp per node, where
 * sums of log-probabilities need three per node and one per leaf.
 * The gradient of a step's log-probability is the sum of grad * probability over the leaves
 * below it; d log sigmoid(z)/dz = 1 - sigmoid(z), d log sigmoid(-z)/dz = -sigmoid(z).
 * A region-leak swap exchanges a node's two probabilities (z becomes -z) but not its hard
 * decision, which is always z > 0.
 */

#include "_kernel_common.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

/* The hard leaf's loops are compiled once per instruction set (FFF_DISPATCH). */

/* The activation codes come from fffsklearn/_activations.py, through setup.py. */
#if !defined(FFF_ACT_RELU) || !defined(FFF_ACT_TANH) || !defined(FFF_ACT_LOGISTIC) || \
    !defined(FFF_ACT_IDENTITY)
#error "build the training kernel through setup.py, which defines the FFF_ACT_* codes"
#endif

/* A C-contiguous 2-D float32 buffer (see fff_get_matrix). */
static int get_dense(PyObject *obj, fff_buffer_t *b, const char *name, Py_ssize_t rows,
                     Py_ssize_t cols, int output) {
    if (fff_get_matrix(obj, b, name, 'f', 4, rows, cols, output) < 0) return -1;
    const Py_buffer *v = &b->view;
    if (!output && (v->strides[1] != 4 || v->strides[0] != 4 * v->shape[1])) {
        PyErr_Format(PyExc_ValueError, "%s must be C-contiguous.", name);
        return -1;
    }
    return 0;
}

/* The depth whose tree has `n_nodes` = 2**depth - 1 nodes, or -1. */
static int depth_of(Py_ssize_t n_nodes) {
    for (int depth = 0; depth < 31; depth++)
        if (((Py_ssize_t)1 << depth) - 1 == n_nodes) return depth;
    return -1;
}

/* The calling thread's handling of denormal floats: the bits of its floating-point control
 * register that flush them to zero. A weight that the L2 decay shrinks for thousands of steps
 * without a gradient (a dead unit), an Adam moment that decays likewise, and a path
 * probability of a routing sharpened by hardening all sink into the denormal range, where
 * every product that reads them runs an order of magnitude slower on x86. Flushed, they are
 * zero: below 1.2e-38 they do not change a float32 sum. */
#if defined(__x86_64__) || defined(__i386__)
#define FLUSH_DENORMALS 0x8040u /* MXCSR: flush to zero (bit 15), denormals are zero (bit 6) */
static unsigned long long denormal_mode(void) { return _mm_getcsr() & FLUSH_DENORMALS; }
static void set_denormal_mode(unsigned long long mode) {
    _mm_setcsr((_mm_getcsr() & ~FLUSH_DENORMALS) | ((unsigned)mode & FLUSH_DENORMALS));
}
#elif defined(__aarch64__) && defined(__GNUC__)
#define FLUSH_DENORMALS (1ull << 24) /* FPCR: flush to zero (FZ) */
static unsigned long long denormal_mode(void) {
    unsigned long long fpcr;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
    return fpcr & FLUSH_DENORMALS;
}
static void set_denormal_mode(unsigned long long mode) {
    unsigned long long fpcr;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
    fpcr = (fpcr & ~FLUSH_DENORMALS) | (mode & FLUSH_DENORMALS);
    __asm__ __volatile__("msr fpcr, %0" : : "r"(fpcr));
}
#else
#define FLUSH_DENORMALS 0ull /* not supported: denormals stay */
static unsigned long long denormal_mode(void) { return 0; }
static void set_denormal_mode(unsigned long long mode) { (void)mode; }
#endif

/* swap_denormal_mode(mode) -> previous mode */
static PyObject *swap_denormal_mode(PyObject *self, PyObject *args) {
    unsigned long long mode;
    if (!PyArg_ParseTuple(args, "K", &mode)) return NULL;
    unsigned long long previous = denormal_mode();
    set_denormal_mode(mode);
    return PyLong_FromUnsignedLongLong(previous);
}

/* path_probabilities(logits, swap, leaf_probabilities_out, hard_one_hot_out, right_out,
 *                    hard_leaves_out) */
static PyObject *path_probabilities(PyObject *self, PyObject *args) {
    PyObject *logits_obj, *swap_obj, *probabilities_obj, *hard_obj, *right_obj, *leaves_obj;
    if (!PyArg_ParseTuple(args, "OOOOOO", &logits_obj, &swap_obj, &probabilities_obj, &hard_obj,
                          &right_obj, &leaves_obj))
        return NULL;
    fff_buffer_t logits = {0}, swap = {0}, probabilities = {0}, hard = {0}, right = {0},
             leaves = {0};
    PyObject *result = NULL;
    double *products = NULL;
    if (fff_get_matrix(logits_obj, &logits, "logits", 'f', 4, -1, -1, 0) < 0) goto done;
    Py_ssize_t n = logits.view.shape[0], n_nodes = logits.view.shape[1];
    int depth = depth_of(n_nodes);
    if (depth < 0) {
        PyErr_SetString(PyExc_ValueError, "logits must have 2**depth - 1 columns.");
        goto done;
    }
    Py_ssize_t n_leaves = n_nodes + 1;
    if (swap_obj != Py_None &&
        fff_get_matrix(swap_obj, &swap, "swap", '?', 1, n, n_nodes, 0) < 0)
        goto done;
    if (fff_get_matrix(probabilities_obj, &probabilities, "leaf_probabilities_out", 'f', 4, n,
                   n_leaves, 1) < 0 ||
        fff_get_matrix(hard_obj, &hard, "hard_one_hot_out", 'f', 4, n, n_leaves, 1) < 0 ||
        fff_get_matrix(right_obj, &right, "right_out", 'f', 4, n, n_nodes, 1) < 0 ||
        fff_get_vector(leaves_obj, &leaves, "hard_leaves_out", 'q', 8, n, 1) < 0)
        goto done;
    products = malloc(sizeof(double) * n_leaves);
    if (products == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const char *z_base = logits.view.buf, *s_base = swap.held ? swap.view.buf : NULL;
    Py_ssize_t z_row = logits.view.strides[0], z_col = logits.view.strides[1];
    Py_ssize_t s_row = swap.held ? swap.view.strides[0] : 0;
    Py_ssize_t s_col = swap.held ? swap.view.strides[1] : 0;
    FFF_BEGIN_ALLOW_THREADS_FOR(n * n_leaves)
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *z_row_base = z_base + i * z_row;
        float *p = (float *)probabilities.view.buf + i * n_leaves;
        float *h = (float *)hard.view.buf + i * n_leaves;
        float *r = (float *)right.view.buf + i * n_nodes;
        products[0] = 1.0;
        for (int level = 0; level < depth; level++) {
            Py_ssize_t first = ((Py_ssize_t)1 << level) - 1;
            /* Descending, so that products[j] is read before 2j and 2j + 1 are written. */
            for (Py_ssize_t j = first; j >= 0; j--) {
                Py_ssize_t node = first + j;
                double z = *(const float *)(z_row_base + node * z_col);
                if (s_base && *(s_base + i * s_row + node * s_col)) z = -z;
                /* sigmoid(z) and sigmoid(-z) from one exp(-|z|), which cannot overflow. */
                double e = exp(-fabs(z)), denominator = 1.0 + e;
                double go_right = (z >= 0.0 ? 1.0 : e) / denominator;
                double go_left = (z >= 0.0 ? e : 1.0) / denominator;
                double base = products[j];
                r[node] = (float)go_right;
                products[2 * j + 1] = base * go_right;
                products[2 * j] = base * go_left;
            }
        }
        Py_ssize_t node = 0;
        for (int level = 0; level < depth; level++)
            node = 2 * node + 1 + (*(const float *)(z_row_base + node * z_col) > 0.0f);
        for (Py_ssize_t j = 0; j < n_leaves; j++) {
            p[j] = (float)products[j];
            h[j] = 0.0f;
        }
        h[node - n_nodes] = 1.0f;
        ((int64_t *)leaves.view.buf)[i] = node - n_nodes;
    }
    FFF_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    free(products);
    fff_release(&logits), fff_release(&swap), fff_release(&probabilities), fff_release(&hard), fff_release(&right);
    fff_release(&leaves);
    return result;
}

/* path_gradients(grad_probabilities, leaf_probabilities, right, swap, grad_logits_out) */
static PyObject *path_gradients(PyObject *self, PyObject *args) {
    PyObject *grad_obj, *probabilities_obj, *right_obj, *swap_obj, *out_obj;
    if (!PyArg_ParseTuple(args, "OOOOO", &grad_obj, &probabilities_obj, &right_obj, &swap_obj,
                          &out_obj))
        return NULL;
    fff_buffer_t grad = {0}, probabilities = {0}, right = {0}, swap = {0}, out = {0};
    PyObject *result = NULL;
    double *below = NULL;
    if (fff_get_matrix(probabilities_obj, &probabilities, "leaf_probabilities", 'f', 4, -1, -1, 0) < 0)
        goto done;
    Py_ssize_t n = probabilities.view.shape[0], n_leaves = probabilities.view.shape[1];
    Py_ssize_t n_nodes = n_leaves - 1;
    int depth = depth_of(n_nodes);
    if (depth < 0) {
        PyErr_SetString(PyExc_ValueError, "leaf_probabilities must have 2**depth columns.");
        goto done;
    }
    if (fff_get_matrix(grad_obj, &grad, "grad_probabilities", 'f', 4, n, n_leaves, 0) < 0 ||
        fff_get_matrix(right_obj, &right, "right", 'f', 4, n, n_nodes, 0) < 0 ||
        (swap_obj != Py_None && fff_get_matrix(swap_obj, &swap, "swap", '?', 1, n, n_nodes, 0) < 0) ||
        fff_get_matrix(out_obj, &out, "grad_logits_out", 'f', 4, n, n_nodes, 1) < 0)
        goto done;
    below = malloc(sizeof(double) * n_leaves);
    if (below == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const Py_buffer *g = &grad.view, *p = &probabilities.view, *r = &right.view;
    const char *s_base = swap.held ? swap.view.buf : NULL;
    Py_ssize_t s_row = swap.held ? swap.view.strides[0] : 0;
    Py_ssize_t s_col = swap.held ? swap.view.strides[1] : 0;
    FFF_BEGIN_ALLOW_THREADS_FOR(n * n_leaves)
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *g_row = (const char *)g->buf + i * g->strides[0];
        const char *p_row = (const char *)p->buf + i * p->strides[0];
        const char *r_row = (const char *)r->buf + i * r->strides[0];
        float *o = (float *)out.view.buf + i * n_nodes;
        for (Py_ssize_t j = 0; j < n_leaves; j++)
            below[j] = (double)*(const float *)(g_row + j * g->strides[1]) *
                       *(const float *)(p_row + j * p->strides[1]);
        for (int level = depth - 1; level >= 0; level--) {
            Py_ssize_t first = ((Py_ssize_t)1 << level) - 1;
            /* Ascending, so that below[2j] and below[2j + 1] are read before j is written. */
            for (Py_ssize_t j = 0; j <= first; j++) {
                Py_ssize_t node = first + j;
                double left = below[2 * j], right_ = below[2 * j + 1];
                double probability = *(const float *)(r_row + node * r->strides[1]);
                double dz = right_ - probability * (left + right_);
                if (s_base && *(s_base + i * s_row + node * s_col)) dz = -dz;
                o[node] = (float)dz;
                below[j] = left + right_;
            }
        }
    }
    FFF_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    free(below);
    fff_release(&grad), fff_release(&probabilities), fff_release(&right), fff_release(&swap), fff_release(&out);
    return result;
}

/* The hard leaf's layers. Hidden and output weights of every leaf are stored side by side:
 * leaf j owns columns j*L .. j*L + L - 1 of the (n, J*L) hidden activations, of the
 * (d, J*L) hidden weights and of the (o, J*L) output weights. Under straight-through routing
 * a row's outputs and its gradients involve its hard leaf alone, so these loops touch one
 * block of L columns per row where the dense products of the soft mixture touch all J. */

/* The leaf count J and width L of hidden activations with `width` = J*L columns and output
 * biases of J rows, and each row's hard leaf checked against J. */
static int leaf_layout(Py_ssize_t width, Py_ssize_t n_leaves, const int64_t *leaves,
                       Py_ssize_t n, Py_ssize_t *leaf_width) {
    if (n_leaves < 1 || width % n_leaves) {
        PyErr_SetString(PyExc_ValueError,
                        "the hidden width must be a multiple of the number of leaves.");
        return -1;
    }
    *leaf_width = width / n_leaves;
    for (Py_ssize_t i = 0; i < n; i++)
        if (leaves[i] < 0 || leaves[i] >= n_leaves) {
            PyErr_SetString(PyExc_ValueError, "hard_leaves holds a leaf out of range.");
            return -1;
        }
    return 0;
}

FFF_INLINE void hard_outputs_loop_body(Py_ssize_t n, Py_ssize_t width, Py_ssize_t leaf_width,
                                       Py_ssize_t n_outputs, const float *restrict hidden,
                                       const int64_t *restrict leaves,
                                       const float *restrict weights,
                                       const float *restrict biases, float *restrict outputs) {
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t first = leaves[i] * leaf_width;
        const float *h = hidden + i * width + first;
        for (Py_ssize_t c = 0; c < n_outputs; c++) {
            const float *w = weights + c * width + first;
            float sum = 0.0f;
            for (Py_ssize_t k = 0; k < leaf_width; k++) sum += h[k] * w[k];
            outputs[i * n_outputs + c] = biases[leaves[i] * n_outputs + c] + sum;
        }
    }
}

FFF_DISPATCH(hard_outputs_loop,
             (Py_ssize_t n, Py_ssize_t width, Py_ssize_t leaf_width, Py_ssize_t n_outputs,
              const float *restrict hidden, const int64_t *restrict leaves,
              const float *restrict weights, const float *restrict biases,
              float *restrict outputs),
             (n, width, leaf_width, n_outputs, hidden, leaves, weights, biases, outputs))

/* hard_leaf_outputs(hidden, hard_leaves, leaf_output_weights, leaf_output_biases, outputs_out) */
static PyObject *hard_leaf_outputs(PyObject *self, PyObject *args) {
    PyObject *hidden_obj, *leaves_obj, *weights_obj, *biases_obj, *out_obj;
    if (!PyArg_ParseTuple(args, "OOOOO", &hidden_obj, &leaves_obj, &weights_obj, &biases_obj,
                          &out_obj))
        return NULL;
    fff_buffer_t hidden = {0}, leaves = {0}, weights = {0}, biases = {0}, out = {0};
    PyObject *result = NULL;
    Py_ssize_t leaf_width;
    if (get_dense(hidden_obj, &hidden, "hidden", -1, -1, 0) < 0) goto done;
    Py_ssize_t n = hidden.view.shape[0], width = hidden.view.shape[1];
    if (fff_get_vector(leaves_obj, &leaves, "hard_leaves", 'q', 8, n, 0) < 0 ||
        get_dense(biases_obj, &biases, "leaf_output_biases", -1, -1, 0) < 0)
        goto done;
    Py_ssize_t n_leaves = biases.view.shape[0], n_outputs = biases.view.shape[1];
    if (get_dense(weights_obj, &weights, "leaf_output_weights", n_outputs, width, 0) < 0 ||
        get_dense(out_obj, &out, "outputs_out", n, n_outputs, 1) < 0 ||
        leaf_layout(width, n_leaves, leaves.view.buf, n, &leaf_width) < 0)
        goto done;
    FFF_BEGIN_ALLOW_THREADS_FOR(n * leaf_width * n_outputs)
    hard_outputs_loop(n, width, leaf_width, n_outputs, hidden.view.buf, leaves.view.buf,
                      weights.view.buf, biases.view.buf, out.view.buf);
    FFF_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    fff_release(&hidden), fff_release(&leaves), fff_release(&weights), fff_release(&biases), fff_release(&out);
    return result;
}

/* The activation's derivative, from its output h, as torch's *_backward kernels compute it. */
static inline float activation_slope(int activation, float h) {
    switch (activation) {
    case FFF_ACT_RELU: return h > 0.0f ? 1.0f : 0.0f;
    case FFF_ACT_TANH: return 1.0f - h * h;
    case FFF_ACT_LOGISTIC: return h * (1.0f - h);
    default: return 1.0f;
    }
}

typedef struct {
    Py_ssize_t n, n_features, width, n_leaves, n_outputs;
    const char *X;
    Py_ssize_t x_row, x_col;
    const char *grad_outputs;
    Py_ssize_t g_row, g_col;
    const float *hidden, *output_weights;
    const int64_t *leaves;
    int activation;
    float *grad_hidden_weights, *grad_hidden_biases, *grad_output_weights, *grad_output_biases;
    float *leaf_gradients; /* NULL when the routing does not train */
    /* Scratch: rows sorted by leaf, each leaf's end in that order, the gradient of each row's
     * hard-leaf hidden pre-activations, and one row's gradient of every leaf's hidden layer. */
    Py_ssize_t *order, *ends;
    float *grad_block, *grad_row;
} hard_gradients_t;

#define X_AT(a, i, f) (*(const float *)((a)->X + (i) * (a)->x_row + (f) * (a)->x_col))
#define G_AT(a, i, c) (*(const float *)((a)->grad_outputs + (i) * (a)->g_row + (c) * (a)->g_col))
#define INLINE FFF_INLINE

/* GCC vector types: 8 float lanes, AVX registers in the AVX2 clone, pairs of SSE registers in
 * the baseline one. A block of L floats is L / 8 vectors and L % 8 scalars; with L a
 * constant (hard_gradients_loop) the loops over a block unroll into whole vector operations,
 * where with L known only at run time their set-up cost more than their arithmetic. */
typedef float v8f __attribute__((vector_size(32)));
INLINE v8f load8(const float *p) { v8f v; memcpy(&v, p, sizeof v); return v; }
INLINE void store8(float *p, v8f v) { memcpy(p, &v, sizeof v); }

/* Vectors of a block summed in registers: leaf widths up to this many floats. */
#define MAX_BLOCK_VECTORS 4

/* y[k] += a * x[k] over a block of L floats. */
INLINE void block_axpy(float *y, float a, const float *x, Py_ssize_t L) {
    Py_ssize_t k = 0;
    for (; k + 8 <= L; k += 8) store8(y + k, load8(y + k) + a * load8(x + k));
    for (; k < L; k++) y[k] += a * x[k];
}

INLINE float block_dot(const float *x, const float *y, Py_ssize_t L) {
    v8f sum = {0};
    Py_ssize_t k = 0;
    for (; k + 8 <= L; k += 8) sum += load8(x + k) * load8(y + k);
    float total = ((sum[0] + sum[1]) + (sum[2] + sum[3])) + ((sum[4] + sum[5]) + (sum[6] + sum[7]));
    for (; k < L; k++) total += x[k] * y[k];
    return total;
}

/* out = sum over the leaf's rows r of scale(r) * block(r), a block of L floats per row, summed
 * in registers when L is a multiple of 8 of at most MAX_BLOCK_VECTORS vectors. `scale` and
 * `block` are expressions of the position r in the leaf's order, which the macro's loop
 * declares. */
#define SUM_ROWS_INTO(out, L, first, last, scale, block)                                      \
    do {                                                                                      \
        if ((L) % 8 == 0 && (L) <= 8 * MAX_BLOCK_VECTORS) {                                   \
            v8f sum_[MAX_BLOCK_VECTORS] = {{0}};                                              \
            for (Py_ssize_t r = (first); r < (last); r++) {                                   \
                float s_ = (scale);                                                           \
                const float *b_ = (block);                                                    \
                for (Py_ssize_t v = 0; v < (L) / 8; v++) sum_[v] += s_ * load8(b_ + 8 * v);   \
            }                                                                                 \
            for (Py_ssize_t v = 0; v < (L) / 8; v++) store8((out) + 8 * v, sum_[v]);          \
        } else {                                                                              \
            for (Py_ssize_t k = 0; k < (L); k++) (out)[k] = 0.0f;                             \
            for (Py_ssize_t r = (first); r < (last); r++) block_axpy((out), (scale), (block), (L)); \
        }                                                                                     \
    } while (0)

INLINE void hard_gradients_body(const hard_gradients_t *a, const Py_ssize_t L) {
    Py_ssize_t n = a->n, width = a->width, J = a->n_leaves, o = a->n_outputs;
    for (Py_ssize_t j = 0; j < J; j++) a->ends[j] = 0;
    for (Py_ssize_t i = 0; i < n; i++) a->ends[a->leaves[i]]++;
    for (Py_ssize_t j = 1; j < J; j++) a->ends[j] += a->ends[j - 1];
    for (Py_ssize_t i = n - 1; i >= 0; i--) a->order[--a->ends[a->leaves[i]]] = i;
    for (Py_ssize_t j = 0; j < J; j++) a->ends[j] = j + 1 < J ? a->ends[j + 1] : n;
    for (Py_ssize_t i = 0; i < n; i++) {
        const float *h = a->hidden + i * width;
        float *gw = a->grad_row;
        /* The gradient of every leaf's hidden layer for this row, grad_outputs @ W_out,
         * 32 columns at a time in four registers: four independent chains of additions, where
         * one waited on each addition's latency. */
        Py_ssize_t k = 0;
        for (; k + 32 <= width; k += 32) {
            v8f sum0 = {0}, sum1 = {0}, sum2 = {0}, sum3 = {0};
            for (Py_ssize_t c = 0; c < o; c++) {
                float g = G_AT(a, i, c);
                const float *w = a->output_weights + c * width + k;
                sum0 += g * load8(w), sum1 += g * load8(w + 8);
                sum2 += g * load8(w + 16), sum3 += g * load8(w + 24);
            }
            store8(gw + k, sum0), store8(gw + k + 8, sum1);
            store8(gw + k + 16, sum2), store8(gw + k + 24, sum3);
        }
        for (; k + 8 <= width; k += 8) {
            v8f sum = {0};
            for (Py_ssize_t c = 0; c < o; c++)
                sum += G_AT(a, i, c) * load8(a->output_weights + c * width + k);
            store8(gw + k, sum);
        }
        for (; k < width; k++) {
            float sum = 0.0f;
            for (Py_ssize_t c = 0; c < o; c++)
                sum += G_AT(a, i, c) * a->output_weights[c * width + k];
            gw[k] = sum;
        }
        Py_ssize_t first = a->leaves[i] * L;
        float *gh = a->grad_block + i * L;
        for (Py_ssize_t k = 0; k < L; k++)
            gh[k] = gw[first + k] * activation_slope(a->activation, h[first + k]);
        if (a->leaf_gradients)
            /* Straight-through: every leaf's weight in the mixture gets its hidden layer's
             * gradient dotted with that layer (the output bias term is added by the caller). */
            for (Py_ssize_t m = 0; m < J; m++)
                a->leaf_gradients[i * J + m] = block_dot(gw + m * L, h + m * L, L);
    }
    for (Py_ssize_t j = 0; j < J; j++) {
        Py_ssize_t first = j ? a->ends[j - 1] : 0, last = a->ends[j];
        const Py_ssize_t *order = a->order;
        Py_ssize_t f = 0;
        if (L % 8 == 0 && L <= 16)
            /* Four features at a time: independent chains of additions, as above. */
            for (; f + 4 <= a->n_features; f += 4) {
                v8f sum[4][2] = {{{0}}};
                for (Py_ssize_t r = first; r < last; r++) {
                    const float *gh = a->grad_block + order[r] * L;
                    for (Py_ssize_t q = 0; q < 4; q++) {
                        float x = X_AT(a, order[r], f + q);
                        for (Py_ssize_t v = 0; v < L / 8; v++) sum[q][v] += x * load8(gh + 8 * v);
                    }
                }
                for (Py_ssize_t q = 0; q < 4; q++)
                    for (Py_ssize_t v = 0; v < L / 8; v++)
                        store8(a->grad_hidden_weights + (f + q) * width + j * L + 8 * v, sum[q][v]);
            }
        for (; f < a->n_features; f++)
            SUM_ROWS_INTO(a->grad_hidden_weights + f * width + j * L, L, first, last,
                          X_AT(a, order[r], f), a->grad_block + order[r] * L);
        SUM_ROWS_INTO(a->grad_hidden_biases + j * L, L, first, last, 1.0f,
                      a->grad_block + order[r] * L);
        for (Py_ssize_t c = 0; c < o; c++) {
            SUM_ROWS_INTO(a->grad_output_weights + c * width + j * L, L, first, last,
                          G_AT(a, order[r], c), a->hidden + order[r] * width + j * L);
            float bias = 0.0f;
            for (Py_ssize_t r = first; r < last; r++) bias += G_AT(a, order[r], c);
            a->grad_output_biases[j * o + c] = bias;
        }
    }
}

FFF_INLINE void hard_gradients_loop_body(const hard_gradients_t *a, Py_ssize_t leaf_width) {
    switch (leaf_width) {
    case 8: hard_gradients_body(a, 8); break;
    case 16: hard_gradients_body(a, 16); break;
    case 32: hard_gradients_body(a, 32); break;
    default: hard_gradients_body(a, leaf_width);
    }
}

FFF_DISPATCH(hard_gradients_loop, (const hard_gradients_t *a, Py_ssize_t leaf_width),
             (a, leaf_width))

/* hard_leaf_gradients(X, hidden, hard_leaves, grad_outputs, leaf_output_weights, activation,
 *                     grad_hidden_weights_out, grad_hidden_biases_out,
 *                     grad_output_weights_out, grad_output_biases_out, leaf_gradients_out
 *                     [, grad_pre_activations_out]) */
static PyObject *hard_leaf_gradients(PyObject *self, PyObject *args) {
    PyObject *X_obj, *hidden_obj, *leaves_obj, *g_obj, *weights_obj, *ghw_obj, *ghb_obj,
        *gow_obj, *gob_obj, *leaf_grad_obj, *pre_obj = Py_None;
    int activation;
    if (!PyArg_ParseTuple(args, "OOOOOiOOOOO|O", &X_obj, &hidden_obj, &leaves_obj, &g_obj,
                          &weights_obj, &activation, &ghw_obj, &ghb_obj, &gow_obj, &gob_obj,
                          &leaf_grad_obj, &pre_obj))
        return NULL;
    fff_buffer_t X = {0}, hidden = {0}, leaves = {0}, g = {0}, weights = {0}, ghw = {0}, ghb = {0},
             gow = {0}, gob = {0}, leaf_grad = {0}, pre = {0};
    PyObject *result = NULL;
    hard_gradients_t a = {0};
    float *own_block = NULL;
    Py_ssize_t leaf_width;
    if (activation != FFF_ACT_RELU && activation != FFF_ACT_TANH &&
        activation != FFF_ACT_LOGISTIC && activation != FFF_ACT_IDENTITY) {
        PyErr_Format(PyExc_ValueError, "unknown activation code %d.", activation);
        return NULL;
    }
    if (fff_get_matrix(X_obj, &X, "X", 'f', 4, -1, -1, 0) < 0) goto done;
    Py_ssize_t n = X.view.shape[0], d = X.view.shape[1];
    if (get_dense(hidden_obj, &hidden, "hidden", n, -1, 0) < 0 ||
        fff_get_vector(leaves_obj, &leaves, "hard_leaves", 'q', 8, n, 0) < 0 ||
        get_dense(gob_obj, &gob, "grad_output_biases_out", -1, -1, 1) < 0)
        goto done;
    Py_ssize_t width = hidden.view.shape[1];
    Py_ssize_t n_leaves = gob.view.shape[0], o = gob.view.shape[1];
    if (fff_get_matrix(g_obj, &g, "grad_outputs", 'f', 4, n, o, 0) < 0 ||
        get_dense(weights_obj, &weights, "leaf_output_weights", o, width, 0) < 0 ||
        get_dense(ghw_obj, &ghw, "grad_hidden_weights_out", d, width, 1) < 0 ||
        fff_get_vector(ghb_obj, &ghb, "grad_hidden_biases_out", 'f', 4, width, 1) < 0 ||
        get_dense(gow_obj, &gow, "grad_output_weights_out", o, width, 1) < 0 ||
        (leaf_grad_obj != Py_None &&
         get_dense(leaf_grad_obj, &leaf_grad, "leaf_gradients_out", n, n_leaves, 1) < 0) ||
        leaf_layout(width, n_leaves, leaves.view.buf, n, &leaf_width) < 0 ||
        (pre_obj != Py_None &&
         get_dense(pre_obj, &pre, "grad_pre_activations_out", n, leaf_width, 1) < 0))
        goto done;
    a.n = n, a.n_features = d, a.width = width, a.n_leaves = n_leaves, a.n_outputs = o;
    a.X = X.view.buf, a.x_row = X.view.strides[0], a.x_col = X.view.strides[1];
    a.grad_outputs = g.view.buf, a.g_row = g.view.strides[0], a.g_col = g.view.strides[1];
    a.hidden = hidden.view.buf, a.output_weights = weights.view.buf;
    a.leaves = leaves.view.buf, a.activation = activation;
    a.grad_hidden_weights = ghw.view.buf, a.grad_hidden_biases = ghb.view.buf;
    a.grad_output_weights = gow.view.buf, a.grad_output_biases = gob.view.buf;
    a.leaf_gradients = leaf_grad.held ? leaf_grad.view.buf : NULL;
    /* One spare item each, so that no size is 0 (malloc(0) may return NULL). */
    a.order = malloc(sizeof(Py_ssize_t) * (n + 1));
    a.ends = malloc(sizeof(Py_ssize_t) * (n_leaves + 1));
    /* The caller who asks for the hard leaves' pre-activation gradients gets the scratch. */
    own_block = pre.held ? NULL : malloc(sizeof(float) * (n * leaf_width + 1));
    a.grad_block = pre.held ? pre.view.buf : own_block;
    a.grad_row = malloc(sizeof(float) * (width + 1));
    if (!a.order || !a.ends || !a.grad_block || !a.grad_row) {
        PyErr_NoMemory();
        goto done;
    }
    FFF_BEGIN_ALLOW_THREADS_FOR(n * leaf_width * (d + o))
    hard_gradients_loop(&a, leaf_width);
    FFF_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    free(a.order), free(a.ends), free(own_block), free(a.grad_row);
    fff_release(&X), fff_release(&hidden), fff_release(&leaves), fff_release(&g), fff_release(&weights);
    fff_release(&ghw), fff_release(&ghb), fff_release(&gow), fff_release(&gob), fff_release(&leaf_grad);
    fff_release(&pre);
    return result;
}

/* hard_leaf_input_gradients(grad_pre_activations, hard_leaves, leaf_hidden_weights, out)
 * out[i, q] = sum_k grad_pre_activations[i, k] * leaf_hidden_weights[q, leaf_i * L + k]: the
 * gradient of the leaves' input rows when each row's hidden layer is its hard leaf's, without
 * gathering each row's block of the first layers. */
static PyObject *hard_leaf_input_gradients(PyObject *self, PyObject *args) {
    PyObject *pre_obj, *leaves_obj, *weights_obj, *out_obj;
    if (!PyArg_ParseTuple(args, "OOOO", &pre_obj, &leaves_obj, &weights_obj, &out_obj))
        return NULL;
    fff_buffer_t pre = {0}, leaves = {0}, weights = {0}, out = {0};
    PyObject *result = NULL;
    Py_ssize_t leaf_width;
    if (get_dense(pre_obj, &pre, "grad_pre_activations", -1, -1, 0) < 0) goto done;
    Py_ssize_t n = pre.view.shape[0], L = pre.view.shape[1];
    if (fff_get_vector(leaves_obj, &leaves, "hard_leaves", 'q', 8, n, 0) < 0 ||
        get_dense(weights_obj, &weights, "leaf_hidden_weights", -1, -1, 0) < 0)
        goto done;
    Py_ssize_t rank = weights.view.shape[0], width = weights.view.shape[1];
    if (L < 1 || width % L) {
        PyErr_SetString(PyExc_ValueError, "leaf_hidden_weights must have a multiple of "
                                          "grad_pre_activations' columns as its columns.");
        goto done;
    }
    if (leaf_layout(width, width / L, leaves.view.buf, n, &leaf_width) < 0 ||
        get_dense(out_obj, &out, "out", n, rank, 1) < 0)
        goto done;
    const float *g = pre.view.buf, *w = weights.view.buf;
    const int64_t *leaf = leaves.view.buf;
    float *o = out.view.buf;
    FFF_BEGIN_ALLOW_THREADS_FOR(n * rank * L)
    for (Py_ssize_t i = 0; i < n; i++)
        for (Py_ssize_t q = 0; q < rank; q++)
            o[i * rank + q] = block_dot(g + i * L, w + q * width + leaf[i] * L, L);
    FFF_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    fff_release(&pre), fff_release(&leaves), fff_release(&weights), fff_release(&out);
    return result;
}

/* cross_entropy(logits, targets, row_weight, grad_out, smoothing) -> float
 * Returns sum_i row_weight_i * -sum_c q_ic log softmax(logits_i)[c], the target q_i being
 * 1 - smoothing + smoothing / n_classes on targets_i and smoothing / n_classes elsewhere, and
 * writes its gradient, row_weight_i * (softmax(logits_i) - q_i), computed in double. */
static PyObject *cross_entropy(PyObject *self, PyObject *args) {
    PyObject *logits_obj, *targets_obj, *weight_obj, *out_obj;
    double smoothing;
    if (!PyArg_ParseTuple(args, "OOOOd", &logits_obj, &targets_obj, &weight_obj, &out_obj,
                          &smoothing))
        return NULL;
    if (!(smoothing >= 0.0 && smoothing < 1.0)) {
        PyErr_SetString(PyExc_ValueError, "smoothing must be in [0, 1).");
        return NULL;
    }
    fff_buffer_t logits = {0}, targets = {0}, weight = {0}, out = {0};
    PyObject *result = NULL;
    if (get_dense(logits_obj, &logits, "logits", -1, -1, 0) < 0) goto done;
    Py_ssize_t n = logits.view.shape[0], n_classes = logits.view.shape[1];
    if (fff_get_vector(targets_obj, &targets, "targets", 'q', 8, n, 0) < 0 ||
        fff_get_vector(weight_obj, &weight, "row_weight", 'f', 4, n, 0) < 0 ||
        get_dense(out_obj, &out, "grad_out", n, n_classes, 1) < 0)
        goto done;
    const int64_t *y = targets.view.buf;
    for (Py_ssize_t i = 0; i < n; i++)
        if (y[i] < 0 || y[i] >= n_classes) {
            PyErr_SetString(PyExc_ValueError, "targets holds a class out of range.");
            goto done;
        }
    double total = 0.0, spread = smoothing / (double)n_classes;
    FFF_BEGIN_ALLOW_THREADS_FOR(n * n_classes)
    for (Py_ssize_t i = 0; i < n; i++) {
        const float *z = (const float *)logits.view.buf + i * n_classes;
        float *g = (float *)out.view.buf + i * n_classes;
        double w = ((const float *)weight.view.buf)[i], top = z[0], sum = 0.0, z_sum = 0.0;
        for (Py_ssize_t c = 1; c < n_classes; c++) top = fmax(top, z[c]);
        /* exp(z - top) <= 1, held in grad_out until the sum is known: one exp per logit. */
        for (Py_ssize_t c = 0; c < n_classes; c++) {
            double e = exp(z[c] - top);
            g[c] = (float)e;
            sum += e;
            z_sum += z[c];
        }
        double scale = w / sum, shift = w * spread;
        for (Py_ssize_t c = 0; c < n_classes; c++) g[c] = (float)(scale * g[c] - shift);
        g[y[i]] -= (float)(w * (1.0 - smoothing));
        /* -sum_c q_c log p_c = log(sum) + top - (1 - smoothing) z_y - spread * sum_c z_c */
        total += w * (log(sum) + top - (1.0 - smoothing) * z[y[i]] - spread * z_sum);
    }
    FFF_END_ALLOW_THREADS
    result = PyFloat_FromDouble(total);
done:
    fff_release(&logits), fff_release(&targets), fff_release(&weight), fff_release(&out);
    return result;
}

/* add_normal_noise(rows, std, quantiles, seed): rows[i, j] += std[j] * z, each z read from a
 * table of standard normal quantiles (fffsklearn/_training.py, _NORMAL_QUANTILES) at 16
 * random bits of a splitmix64 stream from `seed`: a table read a value, where torch's exact
 * normals cost several transcendental functions. */
static inline uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static PyObject *add_normal_noise(PyObject *self, PyObject *args) {
    PyObject *rows_obj, *std_obj, *quantiles_obj;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "OOOK", &rows_obj, &std_obj, &quantiles_obj, &seed))
        return NULL;
    fff_buffer_t rows = {0}, std = {0}, quantiles = {0};
    PyObject *result = NULL;
    if (get_dense(rows_obj, &rows, "rows", -1, -1, 1) < 0) goto done;
    Py_ssize_t n = rows.view.shape[0], d = rows.view.shape[1];
    if (fff_get_vector(std_obj, &std, "std", 'f', 4, d, 0) < 0 ||
        fff_get_vector(quantiles_obj, &quantiles, "quantiles", 'f', 4, 65536, 0) < 0)
        goto done;
    FFF_BEGIN_ALLOW_THREADS_FOR(n * d)
    const float *s = std.view.buf, *q = quantiles.view.buf;
    uint64_t state = seed, word = 0;
    int left = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        float *r = (float *)rows.view.buf + i * d;
        for (Py_ssize_t j = 0; j < d; j++) {
            if (!left) word = splitmix64(&state), left = 4;
            r[j] += s[j] * q[word & 0xFFFF];
            word >>= 16, left--;
        }
    }
    FFF_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    fff_release(&rows), fff_release(&std), fff_release(&quantiles);
    return result;
}

/* add_tying_gradient(leaves, grad, n_leaves, strength)
 * Each row of `leaves` holds n_leaves = 2**depth slices of `width / n_leaves` columns, in leaf
 * order. Adds to `grad` strength times the gradient of 0.5 * sum ||deviation||^2 over every
 * node below the root, a node's deviation being the mean of the leaves below it minus the
 * mean of those below its parent. Each leaf receives the deviation of each node on its path
 * divided by the leaves below the node, which telescopes to
 *     leaf - sum_{k=0}^{depth-1} c_k * mean_k,   c_0 = 2**(1 - depth), c_k = 2**(k - depth),
 * mean_k being the mean below the leaf's ancestor at level k: one pass up the tree for the
 * means, one down for their weighted sums, and one over the leaves. */
static PyObject *add_tying_gradient(PyObject *self, PyObject *args) {
    PyObject *leaves_obj, *grad_obj;
    Py_ssize_t n_leaves;
    double strength;
    if (!PyArg_ParseTuple(args, "OOnd", &leaves_obj, &grad_obj, &n_leaves, &strength))
        return NULL;
    fff_buffer_t leaves = {0}, grad = {0};
    PyObject *result = NULL;
    float *nodes = NULL;
    if (get_dense(leaves_obj, &leaves, "leaves", -1, -1, 0) < 0) goto done;
    Py_ssize_t rows = leaves.view.shape[0], width = leaves.view.shape[1];
    int depth = n_leaves > 1 ? depth_of(n_leaves - 1) : -1;
    if (depth < 1 || width % n_leaves) {
        PyErr_SetString(PyExc_ValueError, "n_leaves must be a power of 2 above 1 that divides "
                                          "the columns of leaves.");
        goto done;
    }
    if (get_dense(grad_obj, &grad, "grad", rows, width, 1) < 0) goto done;
    Py_ssize_t cols = width / n_leaves, half = n_leaves / 2;
    /* The internal nodes in heap order: node i's children are 2i + 1 and 2i + 2. */
    nodes = malloc(sizeof(float) * ((n_leaves - 1) * cols + 1));
    if (nodes == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const float *x = leaves.view.buf;
    float *g = grad.view.buf;
    float scale = (float)strength;
    FFF_BEGIN_ALLOW_THREADS_FOR(rows * width)
    for (Py_ssize_t r = 0; r < rows; r++) {
        const float *xr = x + r * width;
        float *gr = g + r * width;
        for (Py_ssize_t j = 0; j < half; j++)
            for (Py_ssize_t c = 0; c < cols; c++)
                nodes[(half - 1 + j) * cols + c] =
                    0.5f * (xr[2 * j * cols + c] + xr[(2 * j + 1) * cols + c]);
        for (Py_ssize_t i = half - 2; i >= 0; i--)
            for (Py_ssize_t c = 0; c < cols; c++)
                nodes[i * cols + c] =
                    0.5f * (nodes[(2 * i + 1) * cols + c] + nodes[(2 * i + 2) * cols + c]);
        for (Py_ssize_t c = 0; c < cols; c++) nodes[c] *= (float)ldexp(1.0, 1 - depth);
        for (int level = 1; level < depth; level++) {
            float weight = (float)ldexp(1.0, level - depth);
            for (Py_ssize_t i = ((Py_ssize_t)1 << level) - 1; i < ((Py_ssize_t)2 << level) - 1;
                 i++)
                for (Py_ssize_t c = 0; c < cols; c++)
                    nodes[i * cols + c] =
                        nodes[(i - 1) / 2 * cols + c] + weight * nodes[i * cols + c];
        }
        for (Py_ssize_t j = 0; j < n_leaves; j++)
            for (Py_ssize_t c = 0; c < cols; c++)
                gr[j * cols + c] += scale * (xr[j * cols + c] - nodes[(half - 1 + j / 2) * cols + c]);
    }
    FFF_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    free(nodes);
    fff_release(&leaves), fff_release(&grad);
    return result;
}

static PyMethodDef methods[] = {
    {"path_probabilities", path_probabilities, METH_VARARGS,
     "path_probabilities(logits, swap, leaf_probabilities_out, hard_one_hot_out, right_out,\n"
     "                   hard_leaves_out)\n\n"
     "From the (n, 2**depth - 1) float32 routing logits and the optional boolean region-leak\n"
     "swaps of the same shape, write every leaf's path probability, the one-hot matrix of each\n"
     "row's hard leaf and every node's probability of going right (float32, C-contiguous),\n"
     "and each row's hard leaf (int64)."},
    {"path_gradients", path_gradients, METH_VARARGS,
     "path_gradients(grad_probabilities, leaf_probabilities, right, swap, grad_logits_out)\n\n"
     "Write the gradient of the routing logits from that of the leaf path probabilities."},
    {"cross_entropy", cross_entropy, METH_VARARGS,
     "cross_entropy(logits, targets, row_weight, grad_out, smoothing) -> float\n\n"
     "The row-weighted sum of the cross-entropy of float32 logits with int64 targets,\n"
     "label-smoothed by smoothing in [0, 1); writes its gradient with respect to the logits\n"
     "into grad_out."},
    {"hard_leaf_outputs", hard_leaf_outputs, METH_VARARGS,
     "hard_leaf_outputs(hidden, hard_leaves, leaf_output_weights, leaf_output_biases,\n"
     "                  outputs_out)\n\n"
     "Write each row's outputs from its hard leaf's output layer alone (no master leaf)."},
    {"hard_leaf_gradients", hard_leaf_gradients, METH_VARARGS,
     "hard_leaf_gradients(X, hidden, hard_leaves, grad_outputs, leaf_output_weights,\n"
     "                    activation, grad_hidden_weights_out, grad_hidden_biases_out,\n"
     "                    grad_output_weights_out, grad_output_biases_out, leaf_gradients_out\n"
     "                    [, grad_pre_activations_out])\n\n"
     "Write the gradients of the leaves' weights under straight-through routing, where each\n"
     "row's outputs are its hard leaf's; and, unless leaf_gradients_out is None, every leaf's\n"
     "straight-through gradient per row without its output bias term (the gradient of the\n"
     "leaf's hidden layer, grad_outputs @ W_out, dotted with that layer). Given\n"
     "grad_pre_activations_out, (rows, leaf width), it receives the gradient of each row's\n"
     "hard-leaf hidden pre-activations."},
    {"hard_leaf_input_gradients", hard_leaf_input_gradients, METH_VARARGS,
     "hard_leaf_input_gradients(grad_pre_activations, hard_leaves, leaf_hidden_weights, out)\n\n"
     "Write out[i, q] = grad_pre_activations[i] . leaf_hidden_weights[q, leaf i's block]: the\n"
     "gradient of the leaves' input rows (rows, rank) when each row's hidden layer is its\n"
     "hard leaf's, from each row's hard-leaf pre-activation gradient (rows, leaf width)."},
    {"add_normal_noise", add_normal_noise, METH_VARARGS,
     "add_normal_noise(rows, std, quantiles, seed)\n\n"
     "Add std[j] * z to every rows[i, j] (float32, C-contiguous, in place), each z one of the\n"
     "65536 float32 quantiles chosen by a random stream from the 64-bit seed."},
    {"add_tying_gradient", add_tying_gradient, METH_VARARGS,
     "add_tying_gradient(leaves, grad, n_leaves, strength)\n\n"
     "Add to grad (float32, C-contiguous, the shape of leaves) strength times the gradient of\n"
     "the leaf-tying penalty 0.5 * sum ||deviation||^2 on leaves, (rows, n_leaves * columns):\n"
     "each node's deviation is the mean of the leaves below it minus that below its parent."},
    {"swap_denormal_mode", swap_denormal_mode, METH_VARARGS,
     "swap_denormal_mode(mode) -> int\n\n"
     "Set how the calling thread handles denormal floats, FLUSH_DENORMALS to flush them to\n"
     "zero or 0 to keep them, and return the previous mode, for restoring it."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_training_kernel",
    "The CPU training step's routing and hard-leaf arithmetic.", -1, methods};

PyMODINIT_FUNC PyInit__training_kernel(void) {
#ifdef FFF_X86_DISPATCH
    fff_use_avx2 = fff_cpu_has_avx2();
#endif
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "FLUSH_DENORMALS", (long)FLUSH_DENORMALS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
