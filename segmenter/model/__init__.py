"""The network and what training and prediction both need of it.

``network`` (the residual encoder-decoder and its custom layers), ``losses``, ``introspect``
(input channels, the row channel, how to read the output), ``norm`` (BatchNorm statistics).
"""
