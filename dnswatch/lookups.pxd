# Cython declarations for lookups.py (pure Python mode: lookups.py stays plain Python; scripts/build-speedups
# compiles it with these). The bounds (MAX_*, *_BYTES) and windows stay Python globals (tests change some of
# them); the row indexes, which nothing changes, are C integers. A float that may be None stays an object.
cimport cython

cdef Py_ssize_t I_ANCOUNT, I_ANSWERS, I_ATTEMPTS, I_COMM, I_CONTAINER, I_ID, I_DST, I_LATENCY, I_NETNS, I_PID
cdef Py_ssize_t I_POD, I_POD_NS, I_PROTO, I_QNAME, I_QTYPE, I_QTYPE_NUM, I_RCODE, I_RFLAGS, I_RTS, I_SPORT, I_SRC
cdef Py_ssize_t I_STATUS, I_TS, I_LOOKUP, I_NAT_DST, I_EXE, I_SERVER_POD, I_SERVER_POD_NS


@cython.final
@cython.freelist(1024)
cdef class _Lookup:
    cdef public object id, client, nat_dst, last_response, forwarded_for
    cdef public tuple cols, upstream, server_pod
    cdef public str lower
    cdef public set names
    cdef public list rows, prefix
    cdef public double ts, born, activity
    cdef public bint answered, open, listed
    cdef public Py_ssize_t bytes


@cython.locals(nat=object)
cdef _Lookup _open_lookup(_Lookup lookup, lookup_id, client, list row, str lower, double timeout, tuple last=*)
@cython.locals(flags=object, tc=bint)
cdef tuple _state(list row, str lower)
cdef inline list _labels(str name)
cdef inline tuple _nat_key(list row, str lower)
@cython.locals(n=Py_ssize_t)
cdef list _common(list a, list b)


@cython.final
cdef class LookupStage:
    cdef dict __dict__  # attributes not declared here still work (as in the .py)
    cdef public object emit, capture_id, add_lookup, on_lookup, server_pod_of, take, _only_dst, _id_base
    cdef public object _held, _open
    cdef public bint live, _local_server, _crossed
    cdef public double hold, gap, wait, timeout, clock
    cdef public Py_ssize_t _n, _held_bytes, _open_bytes, nat_copies, hops
    cdef public list _incoming
    cdef public tuple _cols
    cdef public dict _nat, _by_client, _questions, bounded, _servers, _senders, _lowers

    cpdef advance(self, now)
    cpdef flush(self)
    @cython.locals(batch=list, clock=cython.double, hold=cython.double, nat=dict, servers=dict, senders=dict,
                   size=Py_ssize_t, row=list, lower=str, taken=Py_ssize_t, key=tuple, entry=list, lowers=dict)
    cpdef _arrive(self)
    @cython.locals(lowers=dict)
    cpdef str _lower(self, qname)
    @cython.locals(nat=dict, entry=list, row=list, lower=str, taken=Py_ssize_t)
    cpdef _key_held(self)
    cpdef _learn(self, dict seen, address)
    @cython.locals(other=list, client=list, server=list)
    cpdef _merge(self, list entry, list row)
    @cython.locals(nat=dict, size=Py_ssize_t, limit=cython.double, early=Py_ssize_t, entry=object,
                   release=cython.double, row=list, lower=str, taken=Py_ssize_t)
    cpdef _release(self, double now, over=*)
    @cython.locals(lookups=list, lookup=_Lookup, candidate=_Lookup, ts=cython.double, gap=cython.double,
                   query_only=bint, names=set, prefix=list, head=str, n=Py_ssize_t)
    cpdef _group(self, list row, str lower)
    @cython.locals(rows=list, tried=bint, last=tuple, same_port=bint, r=tuple, prefix=list, head=str,
                   n=Py_ssize_t)
    cpdef bint _accepts(self, _Lookup lookup, list row, str lower, double ts) except -1
    @cython.locals(state=tuple, ts=cython.double, rows=list, grown=Py_ssize_t, activity=cython.double)
    cpdef _add(self, _Lookup lookup, list row, str lower)
    @cython.locals(mine=tuple, questions=dict, served=tuple, upstream=bint, keys=list, key=tuple, other=tuple,
                   seen=list, forgotten=Py_ssize_t)
    cpdef _hop(self, list row, str lower, _Lookup lookup)
    cpdef _link(self, _Lookup client, tuple upstream)
    @cython.locals(limit=cython.double, turns=Py_ssize_t, ended=list, lookup=_Lookup, questions=dict, stale=list,
                   rows=list)
    cpdef _close(self, double now)
    cpdef _evict(self)
    @cython.locals(by_client=dict, freed=Py_ssize_t, lookup=_Lookup, same=list, row=list)
    cpdef _end(self, ended)


@cython.locals(rows=list, r=tuple, qtypes=list, candidates=list, first=dict, queries=Py_ssize_t,
               wasted=Py_ssize_t, tcp=Py_ssize_t, n=Py_ssize_t)
cpdef list lookup_row(_Lookup lookup, capture_id)
cdef bint _nat_copies(list a, list b) except -1
cdef bint _is_client_side(list a, list b) except -1
@cython.locals(i=Py_ssize_t)
cdef _merge_nat(list client, list server)
cdef bint _is_upstream(tuple up, tuple client) except -1
cdef bint _loopback(address) except -1
cdef str _json_types(qtypes)
cdef str _json_name(str name)
cdef str _json_names(list names)
