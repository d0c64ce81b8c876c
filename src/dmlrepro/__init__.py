"""dmlrepro: reproduce, compare and ablate deep metric learning papers with one command."""

__version__ = "0.1.0"
