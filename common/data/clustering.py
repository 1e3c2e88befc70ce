"""Clustering for item identifiers: k-means, residual k-means, spectral clustering, TF-IDF text embeddings.

The clusterings are hand-written in torch (scikit-learn's would add nothing: each is a few lines of linear
algebra), seeded through a ``torch.Generator`` so that the same inputs and seed give the same codes on every
machine. TF-IDF is scikit-learn's, the one PMG's keywords use too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def kmeans(x: torch.Tensor, k: int, seed: int = 0, iters: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding.

    Args:
        x: ``[N, D]`` float points.
        k: clusters; clamped to the number of distinct points.
        seed: seed of the k-means++ draws.
        iters: at most this many Lloyd steps (stops when assignments no longer change).

    Returns:
        ``(centroids [k', D], assignment [N])`` with ``k' = min(k, distinct points)``; every cluster non-empty.
    """
    x = x.double()
    n = x.shape[0]
    k = max(1, min(k, int(torch.unique(x, dim=0).shape[0])))
    gen = torch.Generator().manual_seed(seed)
    centroids = x[torch.randint(n, (1,), generator=gen)]
    for _ in range(1, k):  # k-means++: next centre drawn proportionally to the squared distance
        d2 = torch.cdist(x, centroids).min(1).values.pow(2)
        centroids = torch.cat([centroids, x[torch.multinomial(d2 / d2.sum(), 1, generator=gen)]])
    assign = torch.cdist(x, centroids).argmin(1)
    for _ in range(iters):
        for c in range(k):
            members = assign == c
            if members.any():
                centroids[c] = x[members].mean(0)
            else:  # re-seed an empty cluster at the point farthest from its centre
                far = torch.cdist(x, centroids).min(1).values.argmax()
                centroids[c] = x[far]
        new = torch.cdist(x, centroids).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
    # renumber so that every cluster id in 0..k'-1 is used
    used, assign = torch.unique(assign, return_inverse=True)
    return centroids[used].float(), assign


def residual_kmeans(x: torch.Tensor, levels: int, codebook_size: int, seed: int = 0) -> list[torch.Tensor]:
    """Fit residual quantisation codebooks (TIGER's RQ, fitted by k-means instead of an RQ-VAE).

    Level l clusters the residual left after subtracting the centroids chosen at levels < l.

    Returns:
        ``levels`` codebooks ``[k_l, D]``; :func:`residual_codes` assigns points to them.
    """
    residual = x.float().clone()
    codebooks = []
    for level in range(levels):
        centroids, assign = kmeans(residual, codebook_size, seed=seed + level)
        residual = residual - centroids[assign]
        codebooks.append(centroids)
    return codebooks


def residual_codes(x: torch.Tensor, codebooks: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[N, levels]`` codes of ``x`` under residual codebooks (greedy nearest centroid per level)."""
    residual = x.float().clone()
    codes = []
    for centroids in codebooks:
        assign = torch.cdist(residual, centroids).argmin(1)
        residual = residual - centroids[assign]
        codes.append(assign)
    return torch.stack(codes, 1)


def spectral_clusters(adjacency: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Ng–Jordan–Weiss spectral clustering of a symmetric non-negative ``[N, N]`` adjacency into ``k`` groups.

    The top-k eigenvectors of ``D^-1/2 A D^-1/2`` (rows normalised) are clustered by k-means. Nodes of zero
    degree get a self-loop so that the normalisation is defined.
    """
    a = adjacency.double()
    n = a.shape[0]
    if n <= k:
        return torch.arange(n)
    degree = a.sum(1)
    a = a + torch.diag((degree == 0).double())
    inv_sqrt = a.sum(1).rsqrt()
    norm = inv_sqrt[:, None] * a * inv_sqrt[None, :]
    if n <= 3000:
        emb = torch.linalg.eigh(norm)[1][:, -k:]  # ascending eigenvalues: the last k are the top ones
    else:  # large graphs: randomised SVD of the PSD matrix (I + N) / 2, whose singular vectors are N's eigenvectors
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            emb = torch.svd_lowrank((torch.eye(n, dtype=norm.dtype) + norm) / 2, q=k + 8, niter=6)[0][:, :k]
    emb = emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return kmeans(emb.float(), k, seed=seed)[1]


def tfidf_embeddings(texts: Sequence[str], dim: int = 64, max_vocab: int = 4096) -> torch.Tensor:
    """Latent semantic text embeddings: L2-normalised TF-IDF rows projected on their top ``dim`` singular vectors.

    TF-IDF is scikit-learn's (raw counts, smooth idf), as for PMG's keywords. Words are lower-case alphanumeric
    runs, the vocabulary is the ``max_vocab`` most document-frequent words seen in at least two texts. Returns
    ``[len(texts), dim']`` with ``dim' <= dim`` (fewer when the vocabulary is smaller); an all-empty corpus gives
    ``[N, 0]``.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(token_pattern=r"[a-z0-9]+", min_df=2, norm=None, dtype=np.float64)
    try:
        x = vectorizer.fit_transform([t or "" for t in texts])
    except ValueError:  # no word in two texts: no vocabulary
        return torch.zeros(len(texts), 0)
    terms = vectorizer.get_feature_names_out()
    df = np.asarray((x > 0).sum(0)).ravel()
    keep = sorted(range(len(terms)), key=lambda j: (-df[j], terms[j]))[:max_vocab]
    m = torch.from_numpy(x[:, keep].toarray())
    m = m / m.norm(dim=1, keepdim=True).clamp_min(1e-12)
    u, s, _ = torch.linalg.svd(m - m.mean(0), full_matrices=False)
    r = min(dim, int((s > 1e-9).sum()))
    emb = u[:, :r] * s[:r]
    # fix each component's sign (largest-magnitude entry positive) so the output does not depend on the LAPACK build
    signs = torch.sign(emb.gather(0, emb.abs().argmax(0, keepdim=True)))
    return (emb * signs).float()
