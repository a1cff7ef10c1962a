"""The ``reference`` kind: the plain loop the engine must beat, as a kind every benchmark can run.

Frozen embeddings + multinomial logistic regression, scikit-learn's defaults (L2, C = 1, no
class weights, no pseudo-labels from the pool, no n-gram features), fitted to convergence; one probability per text
(T = 1), so margin on it is plain margin. The simulation's ``reference`` strategy is this kind + margin, top-k, no
exploration (``backend.al.simulate``).
"""

from __future__ import annotations

from backend.al.kinds import linear


class Kind(linear.Kind):
    """Logistic regression at C = 1, unweighted, no posterior (``MODEL_MODE=reference``)."""

    name = "reference"
    class_weighted = False
    posterior = False
    propagates = False
    lexical = False

    def l2(self, n_labels: int, n_classes: int) -> float:
        return 1.0
