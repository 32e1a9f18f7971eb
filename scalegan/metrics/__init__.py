"""Sample-quality metrics on extracted features.

* :func:`fid_from_features` / :func:`frechet_distance` - FID (Heusel et al. 2017).
* :func:`kid_from_features` / :func:`mmd2_unbiased` - KID (Bińkowski et al. 2018).
* :func:`precision_recall` - improved precision and recall (Kynkäänniemi et al. 2019).
* :func:`build_extractor` - ``"inception"`` (the FID Inception-v3 file, never downloaded) or
  ``"random"`` (a fixed random conv net for tests); :func:`extract_features` runs one over batches.
"""

from scalegan.metrics.features import (
    FeatureExtractor,
    InceptionFeatures,
    MissingWeightsError,
    RandomConvFeatures,
    WeightsLoadError,
    build_extractor,
    extract_features,
    resize_for_extractor,
)
from scalegan.metrics.fid import feature_statistics, fid_from_features, frechet_distance
from scalegan.metrics.kid import KIDResult, kid_from_features, mmd2_unbiased
from scalegan.metrics.pr import PrecisionRecall, precision_recall

__all__ = [
    "FeatureExtractor", "InceptionFeatures", "KIDResult", "MissingWeightsError",
    "PrecisionRecall", "RandomConvFeatures", "WeightsLoadError", "build_extractor",
    "extract_features", "feature_statistics", "fid_from_features", "frechet_distance",
    "kid_from_features", "mmd2_unbiased", "precision_recall", "resize_for_extractor",
]
