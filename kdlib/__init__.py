"""kdlib: a reproducible study of channel knowledge distillation.

Methods: ICKD, CCS, CD+GKD+EDT, CWT, IE-KD, and the baselines they compare against (KD first).
See the book (``make book``) for what each method computes and how our numbers compare with the papers'.
"""

__version__ = "0.1.0"
