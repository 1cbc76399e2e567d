"""scg.models: VAEs, flow posteriors, IWAE, discrete-latent VAEs and Bayesian logistic regression.

Built only on scg's public API; the proof that the library serves real models.
"""

from scg.models import data
from scg.models.blr import BayesianLogisticRegression
from scg.models.categorical_vae import CategoricalEncoder, CategoricalVAE
from scg.models.discrete_vae import DISCRETE_ESTIMATORS, DiscreteVAE, make_estimator
from scg.models.evaluate import active_units, log_likelihood, posterior_means
from scg.models.flow_posterior import (
    FLOW_KINDS,
    IAF,
    AffineCoupling,
    FlowLayer,
    FlowPosterior,
    Planar,
    Radial,
    flow_layers,
)
from scg.models.flows import (
    MADE,
    AffineCouplingTransform,
    IAFTransform,
    PlanarTransform,
    RadialTransform,
)
from scg.models.iwae import IWAE, IWAE_GRADIENTS
from scg.models.nets import (
    BernoulliDecoder,
    BernoulliEncoder,
    BernoulliPrior,
    GaussianDecoder,
    GaussianEncoder,
    StandardNormalPrior,
    mlp,
)
from scg.models.sbn import SBN_ESTIMATORS, SigmoidBeliefNet, sbn_estimators
from scg.models.train import History, TrainConfig, fit, resolve_device
from scg.models.vae import VAE, LinearWarmup

__all__ = [
    "CategoricalVAE",
    "CategoricalEncoder",
    "data",
    "SigmoidBeliefNet",
    "sbn_estimators",
    "SBN_ESTIMATORS",
    "mlp",
    "GaussianEncoder",
    "BernoulliEncoder",
    "BernoulliDecoder",
    "GaussianDecoder",
    "StandardNormalPrior",
    "BernoulliPrior",
    "PlanarTransform",
    "RadialTransform",
    "MADE",
    "IAFTransform",
    "AffineCouplingTransform",
    "FlowLayer",
    "Planar",
    "Radial",
    "IAF",
    "AffineCoupling",
    "FlowPosterior",
    "flow_layers",
    "FLOW_KINDS",
    "VAE",
    "IWAE",
    "IWAE_GRADIENTS",
    "DiscreteVAE",
    "BayesianLogisticRegression",
    "DISCRETE_ESTIMATORS",
    "make_estimator",
    "LinearWarmup",
    "log_likelihood",
    "active_units",
    "posterior_means",
    "fit",
    "TrainConfig",
    "History",
    "resolve_device",
]
