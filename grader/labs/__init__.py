"""The labs this kit grades: one package per assignment (course.toml [course] assignment), holding
what the engine needs to know about that lab and nothing the engine knows about: what to capture
from a student's kernel, how each graded cell is verified, and the trusted recomputations."""
