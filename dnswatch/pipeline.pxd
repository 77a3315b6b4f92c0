# Cython declarations for pipeline.py (pure Python mode: pipeline.py stays plain Python; scripts/build-speedups
# compiles it with these). The correlator is typed, so that each message is one C call into it; every other
# attribute lives in the instance's __dict__, as in the .py.
cimport cython

from dnswatch.correlate cimport Correlator


@cython.final
cdef class Pipeline:
    cdef dict __dict__
    cdef public Correlator correlator
    cdef public object summary

    @cython.locals(correlator=Correlator, seg=object, payload=object, msg=object, decoded=dict,
                   head='const unsigned char*')
    cpdef _messages(self, list segments)
