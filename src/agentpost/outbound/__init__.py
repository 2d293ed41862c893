"""Everything that leaves: the submit choke point (queue, delivery and bounces are next)."""
