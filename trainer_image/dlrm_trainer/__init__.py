"""DLRM trainer image: embedding servers, the ShadowSync sync server and Hogwild trainers as processes."""

__version__ = "0.1.0"
