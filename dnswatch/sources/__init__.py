"""Frame sources. Each yields :class:`dnswatch.model.Frame` objects: ``pcap`` from files, ``live`` from the kernel."""
