__version__ = "0.1.0"

# Bumped whenever the pickled state of the estimators changes meaning.
STATE_FORMAT = 3
