"""``none``: the raw split feature, the baseline every other defense is read against."""
from defenses import register_defense
from defenses.base import Defense


@register_defense("none")
class NoDefense(Defense):
    """No defense: the cloud sees the raw split feature."""

    releases_features = True
