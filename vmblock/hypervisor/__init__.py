"""Hypervisor connectors: learn which VM owns which vdisk from libvirt and keep it current.

* ``domains``: a domain's XML read into plain facts (name, uuid, state, guest OS, disks);
* ``mapping``: which of those disks are this server's LUNs, and why the others are not;
* ``calls``: libvirt's blocking calls run on a thread of their own, each with a timeout;
* ``connector``: one libvirt connection (libvirtaio events, periodic resync, reconnect);
* ``manager``: the connectors of a running server and the one place their facts become
  VM records (``vmblock.meta.hypervisors``);
* ``importer``: ``vm import``, a domain's image files copied thin onto new vdisks.

libvirt-python is optional (the ``libvirt`` extra): nothing here imports it at module level,
so a server without it starts, and adding a hypervisor then says what to install.
"""
