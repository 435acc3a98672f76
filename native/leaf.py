"""The shape of a map leaf, shared by the kernels (``extent``) and the store's key layout.

Plain integers, no numpy and no Numba: code that only reads leaves as the meta DB stores them
(``vmblock.store.census``, behind the listing verbs) imports this, not the kernels.
"""

LEAF_BITS = 8
LEAF_AUS = 1 << LEAF_BITS           # entries per leaf: 16 MiB of vdisk at 64 KiB AUs
LEAF_MASK = LEAF_AUS - 1
NO_LEAF = 0                         # the L1 value of an absent leaf; leaf 0 is all UNMAPPED
UNMAPPED_AU = 0xFFFFFFFF            # an entry that maps nothing (``extent.UNMAPPED``)
