"""Shared datastores inside a vdisk: the volume managers' on-disk formats, read from the LUN's
bytes, mapped to byte ranges of the LUN (docs/datastores.md).

``lvm`` parses an LVM2 physical volume (label, PV header, metadata area, the text metadata);
``watch`` is the owner's cheap write hook (one range check per write) and the debounce that
turns a burst of metadata writes into one re-read.
"""
