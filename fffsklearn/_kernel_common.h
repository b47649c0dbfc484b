/* What the two compiled extensions share (fffsklearn/inference/_kernel.c, the inference
 * kernel, and fffsklearn/_training_kernel.c, the training step's arithmetic): reading NumPy
 * buffers, and choosing the instruction set. Each includes it once, before anything else.
 *
 * Instruction sets. One build runs on every CPU of its architecture: on x86-64 with GCC, each
 * hot loop is compiled twice, once for x86-64-v3 (AVX2 and FMA, FFF_TARGET_AVX2) and once for
 * the baseline, and a call runs the widest instance this CPU supports (fff_cpu_has_avx2,
 * asked once when the module loads). Elsewhere, or with FFF_NO_DISPATCH, the baseline
 * instance alone is built. */
#ifndef FFF_KERNEL_COMMON_H
#define FFF_KERNEL_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FFF_NO_DISPATCH)
#define FFF_X86_DISPATCH 1
#define FFF_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))

/* Whether this CPU and its operating system run x86-64-v3 code. */
static inline int fff_cpu_has_avx2(void) {
    __builtin_cpu_init();
#if __GNUC__ >= 12
    return __builtin_cpu_supports("x86-64-v3") != 0;
#else /* before GCC 12 knows the level by name: its AVX2-era features, all of them from Haswell */
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("bmi2");
#endif
}
#endif

#define FFF_INLINE static inline __attribute__((always_inline))

/* FFF_DISPATCH(name, params, args) defines `static void name params`, which runs
 * `name##_body args` (an FFF_INLINE function) compiled for the widest instruction set of
 * this CPU: fff_use_avx2, which the module sets from fff_cpu_has_avx2 when it loads. */
#ifdef FFF_X86_DISPATCH
static int fff_use_avx2 __attribute__((unused));
#define FFF_DISPATCH(name, params, args)                                                      \
    FFF_TARGET_AVX2 static void name##_avx2 params { name##_body args; }                     \
    static void name##_baseline params { name##_body args; }                                 \
    static void name params {                                                                 \
        if (fff_use_avx2) name##_avx2 args;                                                   \
        else name##_baseline args;                                                            \
    }
#else
#define FFF_DISPATCH(name, params, args) static void name params { name##_body args; }
#endif

/* A buffer held for the duration of one call; release it on every path. */
typedef struct {
    Py_buffer view;
    int held;
} fff_buffer_t;

static inline void fff_release(fff_buffer_t *b) {
    if (b->held) PyBuffer_Release(&b->view);
    b->held = 0;
}

/* The struct-module format character of a buffer's items, without byte-order prefix; '?'
 * for a format of more than one item. */
static inline char fff_item_format(const Py_buffer *view) {
    const char *f = view->format ? view->format : "B";
    while (*f == '<' || *f == '=' || *f == '@' || *f == '|') f++;
    return (f[0] != '\0' && f[1] == '\0') ? f[0] : '?';
}

/* Whether `f` is the format `format`, int64 being 'l' or 'q' wherever both are 8 bytes. */
static inline int fff_format_is(char f, char format) {
    return format == 'q' ? (f == 'q' || f == 'l') : f == format;
}

/* A 2-D buffer of `rows` x `cols` items (either negative: any) of format `format` and size
 * `itemsize`: any strides that are multiples of the item size for an input, C-contiguous and
 * writable for an output. */
static inline int fff_get_matrix(PyObject *obj, fff_buffer_t *b, const char *name, char format,
                                 Py_ssize_t itemsize, Py_ssize_t rows, Py_ssize_t cols,
                                 int output) {
    int flags = output ? (PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE)
                       : (PyBUF_STRIDES | PyBUF_FORMAT);
    if (PyObject_GetBuffer(obj, &b->view, flags) < 0) return -1;
    b->held = 1;
    const Py_buffer *v = &b->view;
    if (v->ndim != 2 || !fff_format_is(fff_item_format(v), format) || v->itemsize != itemsize ||
        (rows >= 0 && v->shape[0] != rows) || (cols >= 0 && v->shape[1] != cols) ||
        v->strides[0] % itemsize || v->strides[1] % itemsize) {
        PyErr_Format(PyExc_ValueError, "%s has the wrong type, shape or strides.", name);
        return -1;
    }
    return 0;
}

/* A C-contiguous 1-D buffer of `length` items (negative: any) of format `format`; writable
 * if `output`. */
static inline int fff_get_vector(PyObject *obj, fff_buffer_t *b, const char *name, char format,
                                 Py_ssize_t itemsize, Py_ssize_t length, int output) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (output ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &b->view, flags) < 0) return -1;
    b->held = 1;
    const Py_buffer *v = &b->view;
    if (v->ndim != 1 || !fff_format_is(fff_item_format(v), format) || v->itemsize != itemsize ||
        (length >= 0 && v->shape[0] != length)) {
        PyErr_Format(PyExc_ValueError, "%s has the wrong type or shape.", name);
        return -1;
    }
    return 0;
}

/* Work (values or multiply-adds) below which a call keeps the GIL. Beside a thread that runs
 * Python without pause, taking the GIL back waits for the interpreter's switch interval: a
 * short call gains less from releasing it than that wait costs. */
#define FFF_GIL_RELEASE_WORK 65536

#define FFF_BEGIN_ALLOW_THREADS_FOR(work)                                                       \
    {                                                                                          \
        PyThreadState *fff_saved_thread_ =                                                     \
            (double)(work) >= FFF_GIL_RELEASE_WORK ? PyEval_SaveThread() : NULL;
#define FFF_END_ALLOW_THREADS                                                                   \
    if (fff_saved_thread_) PyEval_RestoreThread(fff_saved_thread_);                             \
    }

#endif
