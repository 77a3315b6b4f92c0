# Cython declarations for correlate.py (pure Python mode: correlate.py stays plain Python; scripts/build-speedups
# compiles it with these). Module constants stay Python globals (tests change some of them). Correlator's
# attributes are declared for C access; others set on it still work (its __dict__).
cimport cython

cdef Py_ssize_t _TS, _LATENCY, _RTS, _ATTEMPTS, _FIRST_LATENCY, _QSIZE, _IFNAME, _KEY_AT, _KEY_END


@cython.final
cdef class Correlator:
    cdef dict __dict__
    cdef public object emit, capture_id, timeout, on_query, on_response, enrich, expect_responses, _rows_at_query
    cdef public Py_ssize_t max_pending, max_pending_bytes, max_recent
    cdef public dict pending, recent, _templates
    cdef public Py_ssize_t pending_bytes, _gen, _shared, _templates_bytes, _cache_clears
    cdef public Py_ssize_t queries, responses, duplicates, retries, repeated_responses, unanswered, response_only
    cdef public Py_ssize_t evicted, forgotten

    @cython.locals(size=Py_ssize_t, gen=Py_ssize_t, entry=tuple, waiting=tuple, pending=dict)
    cpdef query(self, seg, msg, dns_id)
    @cython.locals(gen=Py_ssize_t)
    cpdef Py_ssize_t _generation(self, Py_ssize_t size) except -2
    cpdef Py_ssize_t _cost(self, tuple entry) except -1
    # the live path's (a capture point, enrich or terminal lines): C calls too
    @cython.locals(pending=dict, waiting=tuple, entry=tuple, rows=list, row=list, size=Py_ssize_t, extra=Py_ssize_t,
                   gen=Py_ssize_t)
    cpdef _query_live(self, key, seg, msg)
    @cython.locals(rows=list, extra=Py_ssize_t)
    cpdef bint _again(self, key, tuple waiting, seg, msg) except -1
    @cython.locals(recent=dict, seen=tuple, rows=list, row=list)
    cpdef _query_only(self, key, seg, msg)
    @cython.locals(row=list, live=tuple)
    cpdef tuple _fill_live(self, list rows, seg)
    @cython.locals(row=list)
    cpdef _response_only(self, seg, msg, dns_id)
    @cython.locals(old=list, entry=tuple, over_bytes=Py_ssize_t, over_count=Py_ssize_t)
    cpdef _evict(self)
    @cython.locals(recent=dict, n=Py_ssize_t, seen=tuple, old=list)
    cpdef _remember(self, key, ts, payload, meta)
    @cython.locals(rows=list, row=list, template=list)
    cpdef list _rows(self, key, msg, ts, size, attempts, ifname, live)
    @cython.locals(hit=tuple, templates=list, row=list)
    cpdef list _templates_of(self, msg, Py_ssize_t size)
    @cython.locals(answer=tuple, raw=bint, templates=list, row=list, template=list)
    cpdef list _answered_of(self, qmsg, Py_ssize_t qsize, msg, Py_ssize_t rsize)
    @cython.locals(cost=Py_ssize_t)
    cpdef _keep(self, msg, list templates, qmsg)
    @cython.locals(pending=dict, waiting=tuple, seen=tuple, gen=Py_ssize_t, extra=Py_ssize_t, qsize=Py_ssize_t,
                   hit=tuple, row=list, template=list)
    cpdef response(self, seg, msg, dns_id)
    @cython.locals(old=list, recent=dict, entry=tuple, seen=tuple)
    cpdef expire(self, now)
    @cython.locals(entry=tuple, gen=Py_ssize_t)
    cpdef _emit_unanswered(self, key)


@cython.locals(meta=object, p=object)
cpdef bint _is_copy(tuple seen, seg) except -1
cdef tuple _point(meta)
cdef bint _same_questions(waiting, msg) except -1
cdef list _message_row(q, msg)
cdef _fill_meta(list row, seg)


@cython.locals(ms=double, us=double, whole=double, frac=double)
cpdef double ms3(double seconds) except? -1.0
