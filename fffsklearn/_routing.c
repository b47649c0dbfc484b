/* Soft routing of FFF training on the CPU: the path probabilities of every leaf, each row's
 * hard leaf, and the backward of the path probabilities.
 *
 * The torch operations that compute the same (fffsklearn/_network.py, _torch_path_* functions)
 * take about thirty small tensor operations per training step, whose dispatch cost more than
 * the arithmetic: 200 us of a 700 us step at depth 4. Here each direction is one call with
 * one pass over every row. Arithmetic is in double, results in float32.
 *
 * A leaf's log-probability is the sum over its path of log sigmoid(z) where the path goes
 * right at a node of logit z and log sigmoid(-z) = log sigmoid(z) - z where it goes left.
 * The gradient of a step's log-probability is the sum of grad * probability over the leaves
 * below it; d log sigmoid(z)/dz = 1 - sigmoid(z), d log sigmoid(-z)/dz = -sigmoid(z).
 * A region-leak swap exchanges a node's two probabilities (z becomes -z) but not its hard
 * decision, which is always z > 0.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    Py_buffer view;
    int held;
} buffer_t;

static void release(buffer_t *b) {
    if (b->held) PyBuffer_Release(&b->view);
    b->held = 0;
}

static char item_format(const Py_buffer *view) {
    const char *f = view->format ? view->format : "B";
    while (*f == '<' || *f == '=' || *f == '@' || *f == '|') f++;
    return (f[0] != '\0' && f[1] == '\0') ? f[0] : '?';
}

/* A 2-D buffer of `rows` x `cols` items of format `format` (and size `itemsize`), any strides
 * for inputs, C-contiguous and writable for outputs. */
static int get_matrix(PyObject *obj, buffer_t *b, const char *name, char format,
                      Py_ssize_t itemsize, Py_ssize_t rows, Py_ssize_t cols, int output) {
    int flags = output ? (PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE)
                       : (PyBUF_STRIDES | PyBUF_FORMAT);
    if (PyObject_GetBuffer(obj, &b->view, flags) < 0) return -1;
    b->held = 1;
    const Py_buffer *v = &b->view;
    if (v->ndim != 2 || item_format(v) != format || v->itemsize != itemsize ||
        (rows >= 0 && v->shape[0] != rows) || (cols >= 0 && v->shape[1] != cols) ||
        v->strides[0] % itemsize || v->strides[1] % itemsize) {
        PyErr_Format(PyExc_ValueError, "%s has the wrong type, shape or strides.", name);
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

static double log_sigmoid(double z) { return fmin(z, 0.0) - log1p(exp(-fabs(z))); }

/* path_probabilities(logits, swap, leaf_probabilities_out, hard_one_hot_out, right_out) */
static PyObject *path_probabilities(PyObject *self, PyObject *args) {
    PyObject *logits_obj, *swap_obj, *probabilities_obj, *hard_obj, *right_obj;
    if (!PyArg_ParseTuple(args, "OOOOO", &logits_obj, &swap_obj, &probabilities_obj, &hard_obj,
                          &right_obj))
        return NULL;
    buffer_t logits = {0}, swap = {0}, probabilities = {0}, hard = {0}, right = {0};
    PyObject *result = NULL;
    double *sums = NULL;
    if (get_matrix(logits_obj, &logits, "logits", 'f', 4, -1, -1, 0) < 0) goto done;
    Py_ssize_t n = logits.view.shape[0], n_nodes = logits.view.shape[1];
    int depth = depth_of(n_nodes);
    if (depth < 0) {
        PyErr_SetString(PyExc_ValueError, "logits must have 2**depth - 1 columns.");
        goto done;
    }
    Py_ssize_t n_leaves = n_nodes + 1;
    if (swap_obj != Py_None &&
        get_matrix(swap_obj, &swap, "swap", '?', 1, n, n_nodes, 0) < 0)
        goto done;
    if (get_matrix(probabilities_obj, &probabilities, "leaf_probabilities_out", 'f', 4, n,
                   n_leaves, 1) < 0 ||
        get_matrix(hard_obj, &hard, "hard_one_hot_out", 'f', 4, n, n_leaves, 1) < 0 ||
        get_matrix(right_obj, &right, "right_out", 'f', 4, n, n_nodes, 1) < 0)
        goto done;
    sums = malloc(sizeof(double) * n_leaves);
    if (sums == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const char *z_base = logits.view.buf, *s_base = swap.held ? swap.view.buf : NULL;
    Py_ssize_t z_row = logits.view.strides[0], z_col = logits.view.strides[1];
    Py_ssize_t s_row = swap.held ? swap.view.strides[0] : 0;
    Py_ssize_t s_col = swap.held ? swap.view.strides[1] : 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *z_row_base = z_base + i * z_row;
        float *p = (float *)probabilities.view.buf + i * n_leaves;
        float *h = (float *)hard.view.buf + i * n_leaves;
        float *r = (float *)right.view.buf + i * n_nodes;
        sums[0] = 0.0;
        for (int level = 0; level < depth; level++) {
            Py_ssize_t first = ((Py_ssize_t)1 << level) - 1;
            /* Descending, so that sums[j] is read before 2j and 2j + 1 are written. */
            for (Py_ssize_t j = first; j >= 0; j--) {
                Py_ssize_t node = first + j;
                double z = *(const float *)(z_row_base + node * z_col);
                if (s_base && *(s_base + i * s_row + node * s_col)) z = -z;
                double log_right = log_sigmoid(z), base = sums[j];
                r[node] = (float)exp(log_right);
                sums[2 * j + 1] = base + log_right;
                sums[2 * j] = base + log_right - z;
            }
        }
        Py_ssize_t node = 0;
        for (int level = 0; level < depth; level++)
            node = 2 * node + 1 + (*(const float *)(z_row_base + node * z_col) > 0.0f);
        for (Py_ssize_t j = 0; j < n_leaves; j++) {
            p[j] = (float)exp(sums[j]);
            h[j] = 0.0f;
        }
        h[node - n_nodes] = 1.0f;
    }
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    free(sums);
    release(&logits), release(&swap), release(&probabilities), release(&hard), release(&right);
    return result;
}

/* path_gradients(grad_probabilities, leaf_probabilities, right, swap, grad_logits_out) */
static PyObject *path_gradients(PyObject *self, PyObject *args) {
    PyObject *grad_obj, *probabilities_obj, *right_obj, *swap_obj, *out_obj;
    if (!PyArg_ParseTuple(args, "OOOOO", &grad_obj, &probabilities_obj, &right_obj, &swap_obj,
                          &out_obj))
        return NULL;
    buffer_t grad = {0}, probabilities = {0}, right = {0}, swap = {0}, out = {0};
    PyObject *result = NULL;
    double *below = NULL;
    if (get_matrix(probabilities_obj, &probabilities, "leaf_probabilities", 'f', 4, -1, -1, 0) < 0)
        goto done;
    Py_ssize_t n = probabilities.view.shape[0], n_leaves = probabilities.view.shape[1];
    Py_ssize_t n_nodes = n_leaves - 1;
    int depth = depth_of(n_nodes);
    if (depth < 0) {
        PyErr_SetString(PyExc_ValueError, "leaf_probabilities must have 2**depth columns.");
        goto done;
    }
    if (get_matrix(grad_obj, &grad, "grad_probabilities", 'f', 4, n, n_leaves, 0) < 0 ||
        get_matrix(right_obj, &right, "right", 'f', 4, n, n_nodes, 0) < 0 ||
        (swap_obj != Py_None && get_matrix(swap_obj, &swap, "swap", '?', 1, n, n_nodes, 0) < 0) ||
        get_matrix(out_obj, &out, "grad_logits_out", 'f', 4, n, n_nodes, 1) < 0)
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
    Py_BEGIN_ALLOW_THREADS
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
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    free(below);
    release(&grad), release(&probabilities), release(&right), release(&swap), release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"path_probabilities", path_probabilities, METH_VARARGS,
     "path_probabilities(logits, swap, leaf_probabilities_out, hard_one_hot_out, right_out)\n\n"
     "From the (n, 2**depth - 1) float32 routing logits and the optional boolean region-leak\n"
     "swaps of the same shape, write every leaf's path probability, the one-hot matrix of each\n"
     "row's hard leaf and every node's probability of going right (float32, C-contiguous)."},
    {"path_gradients", path_gradients, METH_VARARGS,
     "path_gradients(grad_probabilities, leaf_probabilities, right, swap, grad_logits_out)\n\n"
     "Write the gradient of the routing logits from that of the leaf path probabilities."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_routing",
                                    "Soft routing of FFF training on the CPU.", -1, methods};

PyMODINIT_FUNC PyInit__routing(void) { return PyModule_Create(&module); }
