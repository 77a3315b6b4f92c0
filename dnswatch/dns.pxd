# Cython declarations for dns.py (pure Python mode: dns.py stays plain Python; scripts/build-speedups compiles
# it with these). Only the fast reader is typed: the dnslib path and the raw reader are compiled as they are.
# Module constants stay Python globals (tests change some of them).
cimport cython


@cython.locals(parts=list, starts=list, end=Py_ssize_t, size=Py_ssize_t, steps=Py_ssize_t, n=Py_ssize_t,
               target=Py_ssize_t, label=bytes, i=Py_ssize_t, start=Py_ssize_t, suffix=str, hit=object)
cdef tuple _fast_name(bytes data, Py_ssize_t pos, dict names, list budget)

@cython.locals(size=Py_ssize_t, bitmap=Py_ssize_t, qd=Py_ssize_t, an=Py_ssize_t, ns=Py_ssize_t, ar=Py_ssize_t,
               pos=Py_ssize_t, end=Py_ssize_t, rtype=Py_ssize_t, rclass=Py_ssize_t, rdlen=Py_ssize_t, n=Py_ssize_t,
               section=Py_ssize_t, count=Py_ssize_t, code=Py_ssize_t, length=Py_ssize_t, ext_rcode=Py_ssize_t,
               names=dict, budget=list, questions=list, strings=list, qr=bint)
cdef _read_fast(bytes payload)
