"""runner: a declarative deployment runner driven by GitHub webhooks."""

__version__ = "0.1.0"
