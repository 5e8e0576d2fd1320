"""Data that lessons share, below every lesson: deterministic generators of Instagram-like data
(``instagram``, ``burbn``) and loaders for the published tables in the repository's ``datasets/`` folder
(``tables``).

Lessons and the ui may import it; it imports only lower layers (services, load, profile, errors).
"""
