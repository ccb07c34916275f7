"""One module per distillation method, and the methods' math.

The math lives in :mod:`kdlib.losses.functional` (pure, unweighted tensor functions); each method module adds
its configuration, its learnable parts, its weights and what its figure shows. The table of methods, in the
order of the study's tables, is :data:`kdlib.methods.METHODS`.
"""
