"""The recommender service: item statistics fed by the pipeline, and the strategies that rank items."""

import os

# implicit runs its own threads; OpenBLAS threads on top of them only oversubscribe the cores (and spin while they
# wait). This must precede numpy's first import, which any module of the service may do (services/recommender/
# learned.py setting it was too late: the service ran two OpenBLAS threads).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
