# Cython declarations for frames.py (pure Python mode: frames.py stays plain Python; scripts/build-speedups
# compiles it with these). Module constants stay Python globals (tests change some of them).
cimport cython

cimport dnswatch.model as model  # (its C new_record)

cdef bint COMPILED  # True here: decode_records reads the bytes through a pointer


cdef inline long _be16(const unsigned char* p, Py_ssize_t i)
@cython.locals(b0=cython.ulonglong, b1=cython.ulonglong, b2=cython.ulonglong, b3=cython.ulonglong)
cdef inline unsigned long long _int32(const unsigned char* p, Py_ssize_t i, bint little)


@cython.final
cdef class FrameDecoder:
    cdef dict __dict__  # attributes not declared here still work (as in the .py)
    cdef public object ports, responses, track_verdict, keep, stats, _beyond_contract
    cdef public dict _frags, _streams, _addr_cache, _addr_pairs
    cdef public object _kept_frags, _extra
    cdef public Py_ssize_t _frag_pieces, _frag_bytes, _ooo_total, _since_sweep

    @cython.locals(unpack4=object, unpack6=object, ip=Py_ssize_t, need4=Py_ssize_t, need6=Py_ssize_t,
                   out=list, size=Py_ssize_t, sweep=Py_ssize_t, n=Py_ssize_t, f=Py_ssize_t, fend=Py_ssize_t,
                   incl=Py_ssize_t, max_record=Py_ssize_t, sec=cython.longlong, frac=cython.longlong,
                   divisor=cython.double, ts=cython.double, first=cython.double, last=cython.double,
                   etype=cython.long, vihl=cython.long, total=cython.long, frag=cython.long, proto=cython.long,
                   plen=cython.long, ulen=cython.long, u=Py_ssize_t, end=Py_ssize_t, stop=Py_ssize_t,
                   pairs=dict, pair=tuple, ip4=cython.long, ip6=cython.long, udp=cython.long,
                   expire_every=Py_ssize_t, p='const unsigned char*', g=Py_ssize_t, et=Py_ssize_t, little=bint,
                   addrs=object)
    cpdef decode_records(self, data, Py_ssize_t pos, Py_ssize_t limit, tuple layout)
    # live capture's batches (sc's): the frame's fields as objects (compared with module constants), sizes as C ints
    @cython.locals(out=list, pairs=dict, pair=tuple, sweep=Py_ssize_t, size=Py_ssize_t, total=cython.long,
                   ulen=cython.long, end=Py_ssize_t, p=cython.p_uchar, eth=cython.long, ip4=cython.long,
                   udp=cython.long, expire_every=Py_ssize_t)
    cpdef list decode_frames(self, frames)
