"""CKKS homomorphic encryption (TenSEAL): key files, parameters and the update codec."""

from common.he.codec import ParamLayout, decrypt_chunks, encrypt_vector
from common.he.keys import HEContext, HEParams, create_key_pair, load_public_context, load_secret_context

__all__ = [
    "HEContext",
    "HEParams",
    "ParamLayout",
    "create_key_pair",
    "decrypt_chunks",
    "encrypt_vector",
    "load_public_context",
    "load_secret_context",
]
