"""bloomlib: the companion library of the Transformer course."""
__version__ = "0.1.0"
