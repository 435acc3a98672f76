"""Worker processes: iSCSI sessions spread over processes, one owner of the pool.

The owner (the ``vmblock serve`` process) keeps the meta DB, the stores, the admin socket, the
portals and every login; ``owner.WorkerPool`` hands each normal session's connection, once
logged in, to a worker (``process``), which runs its full feature phase and forwards the SCSI
commands its fast path does not take (``fastpath``, ``target``) to the owner over a unix
socketpair (``channel``, ``wire``). docs/workers.md describes the protocol and its races.
"""
