"""What the host raises about a plugin call. Plugins do not raise these: the
host tells a plugin's own errors from its verdicts on them by type."""


class HostTimeout(Exception):
    """A plugin call ran past the host's deadline (the plugin's own time)."""


class MalformedResult(Exception):
    """A plugin returned something the host cannot use."""
