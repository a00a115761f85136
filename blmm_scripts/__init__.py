r"""BLMM (Big Linear Mixed Models) for neuroimaging, as a Snakemake workflow's package.

Model, at every voxel v (Maullin-Sapey & Nichols 2021, NeuroImage 244:118582)::

    Y_v = X_v beta_v + Z_v b_v + e_v,   e_v ~ N(0, sigma2_v I),
    b_v ~ N(0, sigma2_v D_v),            D_v block diagonal over factors and levels

where X_v, Z_v are the rows of X and Z of the images present at v.

Notation
--------
=========  ===========================================================
n          number of images (rows of X)
p          fixed effects (columns of X)
r          random factors f1..fr
l_k, q_k   levels of factor k, random effects per level
q          columns of Z, sum_k q_k l_k
vech       column-wise lower triangle incl. diagonal (D map order)
n_v        images present at voxel v
=========  ===========================================================

Modules (the README's "Map of the house" gives one line each): the config
(``config``, ``values``), the plan (``partition``), the stages (``design``,
``batching``, ``voxelwise``, ``maps``, and ``pipeline``, all of them in one
process), the engine (``structure``, ``products``, ``_linalg``, ``likelihood``,
``estimation``, ``inference``), the data (``io``, ``masks``), the extras
(``compare``, ``fdr``, ``report``) and the example (``simulate``).  Stacks of
per-voxel arrays put the voxel axis first.
"""

__all__ = [
    "batching",
    "compare",
    "config",
    "design",
    "estimation",
    "fdr",
    "inference",
    "io",
    "likelihood",
    "maps",
    "masks",
    "partition",
    "pipeline",
    "products",
    "report",
    "simulate",
    "structure",
    "values",
    "voxelwise",
]
