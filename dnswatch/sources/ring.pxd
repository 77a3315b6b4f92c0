# Cython declarations for ring.py (pure Python mode: ring.py stays plain Python; scripts/build-speedups compiles it
# with these). A ring's read is one C loop, and each of its records one C call into Framing.frame.
cimport cython

cimport dnswatch.model as model

cdef unsigned int _RB_BUSY, _RB_DISCARD
cdef Py_ssize_t _RB_HDR


@cython.final
cdef class Framing:
    cdef public dict where, comms
    cdef public object lookup_where, comm, on_task, on_process
    cdef public unsigned long long last_kt
    cdef public double ts_offset
    cdef public long task_meta
    cdef public set told
    cdef public bint ordered
    cdef unsigned long long _told_last
    cdef unsigned long long _where_key
    cdef tuple _where_hit

    cpdef start(self, unsigned long long last_kt, on_task, on_process)
    # the record's numbers as C integers: their arithmetic and comparisons in C, a Python int made for each field kept
    @cython.locals(tm=long, kt=cython.ulonglong, pid_tgid=cython.ulonglong, uid_gid=cython.ulonglong,
                   ifindex=cython.uint, pkt_type=cython.uint, tag=cython.ulonglong, flags=cython.uint,
                   pid=cython.ulonglong, key=cython.ulonglong, hit=tuple)
    cpdef frame(self, tuple fields, bytes data)


@cython.final
cdef class EventRing:
    cdef public Py_ssize_t size, _mask, _base
    cdef public object _cons, _data

    @cython.locals(cons=cython.ulonglong, prod=cython.ulonglong, pos=cython.ulonglong, off=Py_ssize_t,
                   length=cython.uint, meta_size=Py_ssize_t, fields=tuple, packet=bytes)
    cpdef read(self, list out, Framing framing=*)
