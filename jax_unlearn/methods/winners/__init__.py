"""The NeurIPS 2023 Machine Unlearning Challenge winners, one module per winner (registering it), and their
shared pieces (:mod:`.common`)."""
from jax_unlearn.methods.winners import amnesiacs, fanchuan, kookmin, sebastian, seif, sun, toshi  # noqa: F401
