"""Small inputs several test modules share."""

TEXTS = [
    "Paris is in France.",
    "The symbol of gold is Au.",
    "A whale is a mammal.",
    "Lima is the capital of Peru, a country in South America.",
    "Dogs can fly.",
    "Water boils at 100 degrees Celsius at sea level.",
]
"""Six statements of different lengths: padded together in one batch, they could leak across rows."""
