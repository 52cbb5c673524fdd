"""Neural building blocks: MLPs, closures inside ODEs, trainable dynamics, the patient encoder."""

from .closure import NeuralClosure
from .dynamics import MechanisticDynamics, NeuralODEDynamics
from .encoder import PatientEncoder
from .mlp import MLP

__all__ = ["MLP", "NeuralClosure", "MechanisticDynamics", "NeuralODEDynamics", "PatientEncoder"]
