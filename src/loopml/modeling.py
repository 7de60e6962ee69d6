"""Compatibility names of loopml 0.1.

The artifact format and its loader live in :mod:`loopml.artifacts`, metrics in :mod:`loopml.tasks`,
training in :mod:`loopml.trainers`. TorchServe handlers packaged by loopml 0.1 import
``loopml.modeling.Predictor``, which still works.
"""

from loopml.artifacts import SIGNATURE_FILE, Predictor, Signature
from loopml.tasks import auc

__all__ = ["SIGNATURE_FILE", "Predictor", "Signature", "auc"]
