# C helpers for the compiled modules that make records (``cimport dnswatch.model as model`` in their .pxd, with
# ``import dnswatch.model as model`` in their .py). model.py itself is not compiled: this file only declares.

cdef extern from *:
    """
    /* A tuple subclass's instance holding fields' items, as tuple.__new__(kind, fields) makes it (tp_alloc, then
       the items), without the call through tuple.__new__ and its argument tuple. */
    static PyObject *dnswatch_new_record(PyObject *kind, PyObject *fields) {
        PyTypeObject *type = (PyTypeObject *)kind;
        Py_ssize_t i, n = PyTuple_GET_SIZE(fields);
        PyObject *out;
        if (!PyType_Check(kind) || !PyType_IsSubtype(type, &PyTuple_Type)) {
            PyErr_SetString(PyExc_TypeError, "new_record: not a tuple type");
            return NULL;
        }
        out = type->tp_alloc(type, n);
        if (out == NULL)
            return NULL;
        for (i = 0; i < n; i++) {
            PyObject *item = PyTuple_GET_ITEM(fields, i);
            Py_INCREF(item);
            PyTuple_SET_ITEM(out, i, item);
        }
        return out;
    }
    """
    object new_record "dnswatch_new_record"(object kind, tuple fields)
