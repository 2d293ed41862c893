"""agentpost: a self-hosted email platform that gives AI agents real, trustworthy inboxes."""
