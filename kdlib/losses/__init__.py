"""One module per distillation method; importing this package registers them all, in table order.

The math lives in :mod:`kdlib.losses.functional` (pure, unweighted tensor functions); each method module adds
its learnable parts, its configuration and its weights.

The import order below *is* the registry order (the study's tables):
ce, kd, fitnet, at, sp, rkd, pkt, ickd, ccs, cd, cwt, iekd.
"""

# isort: off
from kdlib.losses import kd  # noqa: F401  (ce, kd)
from kdlib.losses import baselines  # noqa: F401  (fitnet, at, sp, rkd, pkt)
from kdlib.losses import ickd  # noqa: F401
from kdlib.losses import ccs  # noqa: F401
from kdlib.losses import cd  # noqa: F401
from kdlib.losses import cwt  # noqa: F401
from kdlib.losses import iekd  # noqa: F401
# isort: on
