"""The MCP adapter: a small tool set over service/, served on stdio (`agentpost mcp`) and at /mcp."""
