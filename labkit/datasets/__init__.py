"""Data that lessons share, below every lesson: deterministic generators of Instagram-like data
(``instagram``, ``burbn``), loaders for the published tables in the repository's ``datasets/`` folder
(``tables``), and stores more than one lesson reads and writes (``geo_store``: the two-continent users
keyspaces on a two-DC Cassandra of lessons 06 and 07; ``post_store``: post cards from Postgres behind
memcached, lessons 09 and 10).

Lessons and the ui may import it; it imports only lower layers (services, load, profile, errors).
"""
