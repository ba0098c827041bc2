"""The change log beyond Redis: the relay that ships it to Kafka and the rebuild and reconcile
that replay it from there (docs/changelog.md)."""
