"""One exception hierarchy for everything cachelib refuses or cannot do.

Every message is written for the person who has to act on it: it names the
setting, parameter or server involved and what to do next.
"""


class CacheError(Exception):
    """Base class: anything cachelib raises on purpose."""


class ConfigError(CacheError):
    """A setting (environment variable) has a value we cannot use."""


class DatabaseUnavailable(CacheError):
    """The database cannot be reached or did not answer in time."""


class MigrationError(CacheError):
    """A migration failed; the database was left as it was before that file."""


class Busy(CacheError):
    """Another transaction held a row or lock the action needs for longer than CACHE_LOCK_TIMEOUT;
    nothing was changed, and trying again later may work."""


class InvalidInput(CacheError):
    """A caller passed a parameter outside its documented range."""


class PermissionDenied(CacheError):
    """The acting user's role may not perform this action."""


class ConfirmationRequired(InvalidInput):
    """A destructive action was called without its exact confirmation token."""
