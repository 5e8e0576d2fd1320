"""The domain code of each lesson, one module (or a few) per lesson: the experiments a notebook runs,
its tables and plots, its ``check_*`` checkpoints and the exercise self-checks.

Lessons may import every lower layer of labkit (services, load, datasets, ui, checkpoints); nothing
in labkit imports a lesson. What two lessons share belongs below (``labkit.datasets`` for data and
stores, ``labkit.load`` for anything timed), not in one lesson's module. ``_solutions`` holds the
reference solutions of the exercises: the tests run the self-checks against them, notebooks never
import them.
"""
