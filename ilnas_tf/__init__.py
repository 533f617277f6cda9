"""ilnas_tf: differentiable neural architecture search with Interleaving Learning (TF2/Keras 3).

Modules (quark0/darts split): ``ops`` (candidate operations) -> ``search_space`` (supernet:
architecture parameters, mixed ops, search cells, encoder, heads) -> ``genotype`` (discrete
architectures) -> ``network`` (evaluation networks) -> ``engine`` (hypergradient) ->
``search`` / ``train`` (command lines) -> ``export`` (SavedModel and ``.keras``).
"""

__version__ = "0.1.0"
